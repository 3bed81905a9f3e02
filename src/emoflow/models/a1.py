"""A1: mel-CNN + BERT/Bi-GRU + attention fusion (Makhmudov et al. 2024).

Speech: log-mel [B,T,F] -> two parallel convs, kernels (10,2) and (2,8) (time, freq), 8 channels
each, "same" padding, concatenated to 16 channels -> four 3x3 convs 16->32->48->64->80, stride 1,
each + BatchNorm + ReLU, max-pool 2 after conv 1 and 2 -> masked mean over time -> FC.
Text: BERT -> FC (100) -> Bi-GRU (hidden 100) over the utterances of a dialogue (batch key
"dialogue"; each utterance alone when absent) -> FC.
Fusion: F_s, F_t projected to n=250; L = tanh(P F), v = softmax(w^T L), M = F v^T -> FC -> logits.
v is returned as "modality_weights" [B,2] (audio, text).

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
    ):
        super().__init__()
        # "same" padding written out (PyTorch convention: the extra pad of an even kernel goes last)
        self.parallel = nn.ModuleList(nn.Conv2d(1, parallel_channels, tuple(k)) for k in parallel_kernels)
        self.parallel_pads = [((k[1] - 1) // 2, k[1] // 2, (k[0] - 1) // 2, k[0] // 2) for k in parallel_kernels]
        c_in = parallel_channels * len(parallel_kernels)
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
        h = F.relu(torch.cat([conv(F.pad(h, pad)) for conv, pad in zip(self.parallel, self.parallel_pads)], dim=1))
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


@register("a1")
class A1(EmotionModel):
    inputs = {"logmel", "text"}
    modes = ("both", "audio", "text")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        m = self.preset["model"]
        dropout = float(m.get("dropout", 0.3))
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
        )
        tx = m.get("text", {})
        spec = m["text_encoder"]
        self.tokenizer, self.text_encoder = load_text_encoder(spec)
        self.text_pooling = spec.get("pool", "cls")
        drop_unused_pooler(self.text_encoder, self.text_pooling)
        hidden = self.text_encoder.config.hidden_size
        t_dim = int(tx.get("fc_dim", 100))
        self.text_fc = nn.Linear(hidden, t_dim)
        g_dim = int(tx.get("gru_hidden", 100))
        self.gru = nn.GRU(t_dim, g_dim, batch_first=True, bidirectional=True)
        self.text_out = nn.Linear(2 * g_dim, int(tx.get("out_dim", 100)))
        n = int(m.get("fusion_dim", 250))
        self.proj_speech = nn.Linear(self.speech.out_dim, n)
        self.proj_text = nn.Linear(self.text_out.out_features, n)
        self.P = nn.Linear(n, n, bias=False)
        self.w = nn.Linear(n, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(n, self.num_classes)
        if m.get("aux_heads", False):
            self.audio_head = nn.Linear(n, self.num_classes)
            self.text_head = nn.Linear(n, self.num_classes)
        else:
            self.audio_head = self.text_head = None

    def encoders(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder}

    def speech_frontend(self) -> nn.Module:
        return self.speech

    def forward(self, batch: dict, mode: str = "both") -> dict:
        self.check(batch, mode)
        feats, out = [], {}
        if mode in ("both", "audio"):
            s = self.speech(batch["logmel"], batch["logmel_mask"])
            f_s = self.dropout(F.relu(self.proj_speech(s)))
            feats.append(f_s)
            if self.audio_head is not None:
                out["audio_logits"] = self.audio_head(f_s)
        if mode in ("both", "text"):
            h = encode_text(self.text_encoder, batch, self.text_pooling)
            h = self.dropout(F.relu(self.text_fc(h)))
            h = dialogue_context(self.gru, h, batch.get("dialogue"))
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
        if mode == "both":
            out["modality_weights"] = v
        else:
            one = torch.ones_like(v[:, 0])
            zero = torch.zeros_like(one)
            out["modality_weights"] = torch.stack([one, zero] if mode == "audio" else [zero, one], dim=1)
        return out
