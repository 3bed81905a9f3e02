"""A1: mel-CNN + BERT/Bi-GRU + attention fusion (Makhmudov et al. 2024).

Speech: log-mel [B,T,F] -> two parallel convs, kernels (10,2) and (2,8) (time, freq), 8 channels
each, "same" padding, concatenated to 16 channels (+ BatchNorm with ``speech.parallel_bn``) + ReLU
-> four 3x3 convs 16->32->48->64->80, stride 1, each + BatchNorm + ReLU, max-pool 2 after conv 1
and 2 -> masked mean over time -> FC.
Text: BERT -> FC (100) -> Bi-GRU (hidden 100) over the utterances of a dialogue (batch key
"dialogue"; each utterance alone when absent) -> FC (``text.out_dim``; ``classes``: the number of
emotion classes, as in the paper).
Fusion: F_s, F_t projected to n=250; L = tanh(P F), v = softmax(w^T L), M = F v^T -> FC -> logits.
v is returned as "modality_weights" [B,2] (audio, text).

Preset options beyond the paper:

- ``inputs: [text]``: text only (e.g. MELD without media); the speech branch is not built, the
  modes are "both" (= text) and "text", and "modality_weights" is always (0, 1);
- ``model.text.context``: ``dialogue`` (default: the Bi-GRU over the dialogue) or ``none`` (no
  GRU: FC -> FC, each utterance on its own); ``text.residual: true`` feeds the FC after the GRU
  with [GRU output, GRU input]; ``text.norm: true`` puts a LayerNorm on the pooled encoder output;
- ``model.text.cache: true`` (frozen text encoder only): the pooled encoder output of each distinct
  token sequence is computed once and memoised on the model (not saved; at most
  ``text.cache_size`` entries, emptied when full), so epochs after the first skip the encoder;
  exact up to float rounding because a frozen encoder stays in eval mode (no dropout);
- ``speech.parallel_bn: false`` (the default, for models saved before it): no BatchNorm after
  the two parallel convolutions (the paper has one after every convolution);
- class-weighted loss: ``compute_loss(out, labels, class_weight=w)`` (the trainer passes the
  preset's ``train.class_weights``, computed on the training part).

The Bi-GRU only sees a dialogue's utterances together when batches hold whole dialogues in order:
presets that use it on dialogue corpora set ``train.batch_by: dialogue`` (see
``emoflow.training.data.DialogueBatchSampler``).

Padding never changes outputs: padded time positions are zeroed before every convolution (so a
padded clip sees the same zeros as the "same" padding of the unpadded clip), BatchNorm statistics
in training use real positions only, pooling is masked, and the Bi-GRU runs on packed sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emoflow.models.base import (
    EmotionModel,
    MaskedBatchNorm2d,
    drop_unused_pooler,
    encode_text,
    lengths_from_mask,
    masked_mean,
    time_mask,
    zero_beyond,
)
from emoflow.models.registry import register
from emoflow.text.encoders import load_text_encoder


class MelCNN(nn.Module):
    """The A1 speech branch; input [B,T,F] log-mel + [B,T] mask -> [B, fc_dim]."""

    def __init__(
        self,
        n_mels: int,
        parallel_kernels=((10, 2), (2, 8)),
        parallel_channels: int = 8,
        channels=(32, 48, 64, 80),
        pool_after=(0, 1),
        fc_dim: int = 256,
        dropout: float = 0.3,
        parallel_bn: bool = False,
    ):
        super().__init__()
        # "same" padding written out (PyTorch convention: the extra pad of an even kernel goes last)
        self.parallel = nn.ModuleList(nn.Conv2d(1, parallel_channels, tuple(k)) for k in parallel_kernels)
        self.parallel_pads = [((k[1] - 1) // 2, k[1] // 2, (k[0] - 1) // 2, k[0] // 2) for k in parallel_kernels]
        c_in = parallel_channels * len(parallel_kernels)
        # paper: BN + ReLU after EVERY convolution, the two parallel ones included (one BN over
        # their concatenated channels = one per branch); off only for models saved before it
        self.parallel_bn = MaskedBatchNorm2d(c_in) if parallel_bn else None
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for c in channels:
            self.convs.append(nn.Conv2d(c_in, c, 3, stride=1, padding=1))
            self.bns.append(MaskedBatchNorm2d(c))
            c_in = c
        self.pool_after = set(pool_after)
        f_out = n_mels
        for _ in self.pool_after:
            f_out //= 2
        if f_out < 1:
            raise ValueError(f"n_mels={n_mels} too small for {len(self.pool_after)} poolings")
        self.fc = nn.Linear(c_in * f_out, fc_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = fc_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = lengths_from_mask(mask, "logmel_mask")
        h = zero_beyond(x.unsqueeze(1), lengths, 2)  # [B,1,T,F]
        h = torch.cat([conv(F.pad(h, pad)) for conv, pad in zip(self.parallel, self.parallel_pads)], dim=1)
        if self.parallel_bn is not None:
            h = self.parallel_bn(h, lengths, time_dim=2)
        h = F.relu(h)
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            h = conv(zero_beyond(h, lengths, 2))
            h = F.relu(bn(h, lengths, time_dim=2))
            if i in self.pool_after:
                h = F.max_pool2d(h, 2)
                lengths = lengths // 2
        frames = h.permute(0, 2, 1, 3).flatten(2)  # [B,T',C*F']
        pooled = masked_mean(frames, time_mask(lengths, frames.shape[1]))
        return self.dropout(F.relu(self.fc(pooled)))


def dialogue_context(gru: nn.GRU, x: torch.Tensor, dialogue: torch.Tensor | None) -> torch.Tensor:
    """Run a (bi)GRU over utterances grouped by dialogue id (batch order) -> [B, out]."""
    if dialogue is None:
        out, _ = gru(x.unsqueeze(1))
        return out[:, 0]
    if dialogue.shape != x.shape[:1]:
        raise ValueError(f"dialogue must be [B]={x.shape[0]}, got shape {tuple(dialogue.shape)}")
    groups: dict[int, list[int]] = {}
    for i, d in enumerate(dialogue.tolist()):
        groups.setdefault(d, []).append(i)
    idx = list(groups.values())
    lengths = torch.tensor([len(g) for g in idx])
    seq = x.new_zeros(len(idx), int(lengths.max()), x.shape[1])
    for gi, g in enumerate(idx):
        seq[gi, : len(g)] = x[g]
    packed = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    out, _ = pad_packed_sequence(out, batch_first=True)
    result = out.new_zeros(x.shape[0], out.shape[2])  # GRU output dtype (autocast may pick it)
    for gi, g in enumerate(idx):
        result[g] = out[gi, : len(g)]
    return result


INPUT_SETS = ({"logmel", "text"}, {"text"})
CONTEXTS = ("dialogue", "none")


@register("a1")
class A1(EmotionModel):
    inputs = {"logmel", "text"}
    modes = ("both", "audio", "text")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        inputs = set(self.preset.get("inputs") or A1.inputs)
        if inputs not in INPUT_SETS:
            raise ValueError(f"a1: preset inputs must be [logmel, text] or [text], got {sorted(inputs)}")
        self.inputs = inputs
        self.modes = ("both", "audio", "text") if "logmel" in inputs else ("both", "text")
        m = self.preset["model"]
        dropout = float(m.get("dropout", 0.3))
        if "logmel" in inputs:
            n_mels = int(self.preset.get("features", {}).get("logmel", {}).get("n_mels", 128))
            sp = m.get("speech", {})
            self.speech = MelCNN(
                n_mels,
                parallel_kernels=sp.get("parallel_kernels", [[10, 2], [2, 8]]),
                parallel_channels=int(sp.get("parallel_channels", 8)),
                channels=sp.get("channels", [32, 48, 64, 80]),
                pool_after=sp.get("pool_after", [0, 1]),
                fc_dim=int(sp.get("fc_dim", 256)),
                dropout=dropout,
                parallel_bn=bool(sp.get("parallel_bn", False)),
            )
        else:
            self.speech = None
        tx = m.get("text", {})
        spec = m["text_encoder"]
        self.tokenizer, self.text_encoder = load_text_encoder(spec)
        self.text_pooling = spec.get("pool", "cls")
        drop_unused_pooler(self.text_encoder, self.text_pooling)
        hidden = self.text_encoder.config.hidden_size
        t_dim = int(tx.get("fc_dim", 100))
        # choice (not in the paper): LayerNorm on the pooled encoder output (frozen sentence vectors)
        self.text_norm = nn.LayerNorm(hidden) if tx.get("norm", False) else None
        self.text_fc = nn.Linear(hidden, t_dim)
        self.context = tx.get("context", "dialogue")
        if self.context not in CONTEXTS:
            raise ValueError(f"a1: model.text.context must be one of {CONTEXTS}, got {self.context!r}")
        # choice (not in the paper): text.residual concatenates the GRU input to its output
        self.text_residual = bool(tx.get("residual", False)) and self.context == "dialogue"
        # paper: the FC after the Bi-GRU maps to the emotion classes (``out_dim: classes``)
        out_dim = tx.get("out_dim", 100)
        out_dim = self.num_classes if out_dim == "classes" else int(out_dim)
        if self.context == "dialogue":
            g_dim = int(tx.get("gru_hidden", 100))
            self.gru = nn.GRU(t_dim, g_dim, batch_first=True, bidirectional=True)
            self.text_out = nn.Linear(2 * g_dim + (t_dim if self.text_residual else 0), out_dim)
        else:
            self.gru = None
            self.text_out = nn.Linear(t_dim, out_dim)
        self.cache_text = bool(tx.get("cache", False))
        if self.cache_text and not spec.get("freeze"):
            raise ValueError("a1: model.text.cache needs a frozen text encoder (text_encoder.freeze: true)")
        self._text_memo: dict = {}
        self.cache_size = int(tx.get("cache_size", 200_000))  # entries; the memo is emptied when full
        n = int(m.get("fusion_dim", 250))
        # (modules are created in the original order: the same seed gives the same initial weights)
        self.proj_speech = nn.Linear(self.speech.out_dim, n) if self.speech is not None else None
        self.proj_text = nn.Linear(self.text_out.out_features, n)
        self.P = nn.Linear(n, n, bias=False)
        self.w = nn.Linear(n, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(n, self.num_classes)
        if m.get("aux_heads", False):
            self.audio_head = nn.Linear(n, self.num_classes) if self.speech is not None else None
            self.text_head = nn.Linear(n, self.num_classes)
        else:
            self.audio_head = self.text_head = None

    def encoders(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder}

    def speech_frontend(self) -> nn.Module:
        return self.speech if self.speech is not None else nn.Module()  # text-only: no parameters

    def _encode_text(self, batch: dict) -> torch.Tensor:
        """Pooled text encoder states [B, H]; memoised per token sequence with ``text.cache``."""
        if not self.cache_text:
            return encode_text(self.text_encoder, batch, self.text_pooling)
        ids, att = batch["input_ids"], batch["attention_mask"]
        keys = [tuple(row[: int(n)].tolist()) for row, n in zip(ids, att.sum(1))]
        tag = (ids.device.type, torch.is_autocast_enabled())
        todo = [i for i, k in enumerate(keys) if (tag, k) not in self._text_memo]
        if todo:
            if len(self._text_memo) + len(todo) > self.cache_size:
                self._text_memo.clear()  # bounded (e.g. a served model sees ever new texts)
            todo.sort(key=lambda i: len(keys[i]))  # similar lengths together: less padding
            for start in range(0, len(todo), 32):
                chunk = todo[start:start + 32]
                sub = torch.tensor(chunk, device=ids.device)
                length = max(len(keys[i]) for i in chunk)
                with torch.no_grad():
                    h = encode_text(self.text_encoder, {"input_ids": ids[sub, :length],
                                                       "attention_mask": att[sub, :length]}, self.text_pooling)
                for j, i in enumerate(chunk):
                    self._text_memo[(tag, keys[i])] = h[j].float()
        return torch.stack([self._text_memo[(tag, k)] for k in keys])

    def _load_from_state_dict(self, *args, **kwargs):
        self._text_memo.clear()  # memoised encoder outputs belong to the old weights
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, batch: dict, mode: str = "both") -> dict:
        self.check(batch, mode)
        feats, out = [], {}
        if mode in ("both", "audio") and self.speech is not None:
            s = self.speech(batch["logmel"], batch["logmel_mask"])
            f_s = self.dropout(F.relu(self.proj_speech(s)))
            feats.append(f_s)
            if self.audio_head is not None:
                out["audio_logits"] = self.audio_head(f_s)
        if mode in ("both", "text"):
            h = self._encode_text(batch)
            if self.text_norm is not None:
                h = self.text_norm(h)
            h = self.dropout(F.relu(self.text_fc(h)))
            if self.gru is not None:
                g = dialogue_context(self.gru, h, batch.get("dialogue"))
                h = torch.cat([g, h], dim=-1) if self.text_residual else g
            h = F.relu(self.text_out(self.dropout(h)))
            f_t = self.dropout(F.relu(self.proj_text(h)))
            feats.append(f_t)
            if self.text_head is not None:
                out["text_logits"] = self.text_head(f_t)
        Fm = torch.stack(feats, dim=1)  # [B, k, n]: the columns of F
        scores = self.w(torch.tanh(self.P(Fm))).squeeze(-1)  # [B, k]
        v = torch.softmax(scores, dim=1)
        M = (v.unsqueeze(-1) * Fm).sum(1)
        out["logits"] = self.classifier(self.dropout(M))
        if mode == "both" and self.speech is not None:
            out["modality_weights"] = v
        else:
            one = torch.ones_like(v[:, 0])
            zero = torch.zeros_like(one)
            out["modality_weights"] = torch.stack([one, zero] if mode == "audio" else [zero, one], dim=1)
        return out
