"""A4: MSMSER (Wang et al. 2023) — emotion queries over HuBERT frames and MPNet tokens.

1. HuBERT frame features [B,Ta,Ha] and MPNet token ("word-level") features [B,Lt,Ht], each
   projected to d_e, through parallel uni-modal transformer encoders (8 heads).
2. Self-attention rescaling: s = sigmoid(MLP2(h)) per frame/token, h <- s * h.
3. Modality interaction: keys/values = [audio ; text] + sinusoidal position encodings (per modality,
   from 0) + a learned modality-type embedding; L learnable emotion queries go through a
   transformer decoder (self-attention among queries + cross-attention to the keys/values).
4. Self-attention pooling of the L query tokens -> 2-layer MLP -> logits.

Random modality masking (training only): with probability p(progress) per sample, mask the text
(probability text_prob = 0.6) or else the audio, by removing that modality's keys from the
cross-attention mask. p decays linearly from p0 = 0.8 at the start to 0 at 70 % of training
(`masking_probability`); the trainer calls `set_progress(progress)` every step.
A masked modality therefore cannot change any logit. Audio-only / text-only inference uses only
the keys of the present modality.

Text token states: the last layer's (``model.text_layers: last``), or ``mix``: a learned
softmax-weighted sum of every hidden state (embeddings + each layer), e.g. over a frozen encoder
(``text_encoder.freeze: true``: the "pre-trained features" of the paper used as features). With "speech_emb" in the preset's inputs (the ``offline``
preset), the speech frames are cached frozen-encoder frames from the batch ("speech_emb" +
"speech_emb_mask", features step) of width ``model.speech_emb.frame_dim``, not a live encoder. A batch may carry "modality_keep" [B,2] bool (audio, text) to
mask modalities explicitly; the mask used is returned as "modality_keep".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emoflow.audio.encoders import load_speech_encoder
from emoflow.models.base import AttentionPool, EmotionModel, mlp
from emoflow.models.registry import register
from emoflow.text.encoders import load_text_encoder


def masking_probability(progress: float, p0: float = 0.8, end: float = 0.7) -> float:
    """Modality masking probability: p0 at progress 0, linear decay to 0 at `end`, 0 after."""
    if not 0.0 <= progress <= 1.0 + 1e-9:
        raise ValueError(f"progress must be in [0,1], got {progress}")
    if end <= 0:
        return 0.0
    return float(p0 * max(0.0, 1.0 - progress / end))


def sinusoidal(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard sinusoidal position encodings [length, dim]."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe.to(dtype)


class Rescale(nn.Module):
    """Self-attention rescaling: 2-layer MLP + sigmoid giving one scale per frame."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.mlp(x))


@register("a4")
class A4(EmotionModel):
    inputs = {"wave", "text"}
    modes = ("both", "audio", "text")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        m = self.preset["model"]
        C = self.num_classes
        d = int(m.get("d_e", 768))
        heads = int(m.get("heads", 8))
        ff = int(m.get("ff_dim", 2048))
        dropout = float(m.get("dropout", 0.1))
        self.cached = "speech_emb" in (self.preset.get("inputs") or [])
        if self.cached:
            self.inputs = {"speech_emb", "text"}
            self.speech_encoder = None
            h_a = int((m.get("speech_emb") or {}).get("frame_dim", 0))
            if h_a <= 0:
                raise ValueError("a4: inputs speech_emb needs model.speech_emb.frame_dim")
        else:
            self.speech_encoder = load_speech_encoder(m["speech_encoder"])
            h_a = self.speech_encoder.hidden_size
        spec = m["text_encoder"]
        self.tokenizer, self.text_encoder = load_text_encoder(spec)
        if getattr(self.text_encoder, "pooler", None) is not None:
            self.text_encoder.pooler = None  # token states only
        # which token states: the last layer's, or a learned softmax-weighted mix of every hidden
        # state (embeddings + each layer; e.g. over a frozen encoder: text_encoder.freeze)
        self.text_layers = m.get("text_layers", "last")
        if self.text_layers not in ("last", "mix"):
            raise ValueError(f"a4: model.text_layers must be 'last' or 'mix', got {self.text_layers!r}")
        if self.text_layers == "mix":
            self.text_layer_weights = nn.Parameter(torch.zeros(self.text_encoder.config.num_hidden_layers + 1))
        self.audio_proj = nn.Linear(h_a, d)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, d)

        def encoder(n):
            layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, batch_first=True)
            return nn.TransformerEncoder(layer, n, enable_nested_tensor=False)

        self.audio_enc = encoder(int(m.get("enc_layers", 2)))
        self.text_enc = encoder(int(m.get("enc_layers", 2)))
        rh = int(m.get("rescale_hidden", d // 2))
        self.audio_rescale = Rescale(d, rh)
        self.text_rescale = Rescale(d, rh)
        self.modality_type = nn.Embedding(2, d)  # 0 audio, 1 text
        self.queries = nn.Parameter(torch.randn(int(m.get("num_queries", 30)), d) * 0.02)
        dec_layer = nn.TransformerDecoderLayer(d, heads, ff, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, int(m.get("dec_layers", 2)))
        self.pool = AttentionPool(d, int(m.get("pool_hidden", d // 2)))
        self.head = mlp([d, int(m.get("mlp_hidden", 256)), C], dropout=dropout)
        mk = m.get("masking", {})
        self.mask_p0 = float(mk.get("p0", 0.8))
        self.mask_end = float(mk.get("end", 0.7))
        self.mask_text_prob = float(mk.get("text_prob", 0.6))

    def encoders(self) -> dict[str, nn.Module]:
        if self.speech_encoder is None:
            return {"text_encoder": self.text_encoder}
        return {"text_encoder": self.text_encoder, "speech_encoder": self.speech_encoder}

    def masking_probability(self, progress: float | None = None) -> float:
        """p for the given (or current) training progress."""
        return masking_probability(self.progress if progress is None else progress, self.mask_p0, self.mask_end)

    def _audio(self, batch):
        if self.cached:
            if "speech_emb" not in batch:
                raise KeyError("a4 needs batch keys ['speech_emb', 'speech_emb_mask'] (cached frames: features step "
                               "with feature_config.encoders and embedding_options.store_frames)")
            frames, fmask = batch["speech_emb"], batch["speech_emb_mask"].bool()
        else:
            frames, fmask = self.speech_encoder(batch["wave"], batch["wave_mask"])
        h = self.audio_enc(self.audio_proj(frames), src_key_padding_mask=~fmask)
        return self.audio_rescale(h), fmask

    def _text(self, batch):
        am = batch["attention_mask"].bool()
        out = self.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=self.text_layers == "mix")
        if self.text_layers == "mix":
            w = torch.softmax(self.text_layer_weights, dim=0)
            states = sum(w[i] * h for i, h in enumerate(out.hidden_states))
        else:
            states = out.last_hidden_state
        h = self.text_enc(self.text_proj(states), src_key_padding_mask=~am)
        return self.text_rescale(h), am

    def _keep(self, batch, B, device) -> torch.Tensor:
        if "modality_keep" in batch:
            keep = batch["modality_keep"].to(device).bool()
            if keep.shape != (B, 2) or (~keep).all(1).any():
                raise ValueError("modality_keep must be [B,2] bool with at least one modality kept per row")
            return keep
        keep = torch.ones(B, 2, dtype=torch.bool, device=device)
        if self.training:
            p = self.masking_probability()
            if p > 0:
                drop = torch.rand(B, device=device) < p
                text = torch.rand(B, device=device) < self.mask_text_prob
                keep[:, 1] &= ~(drop & text)
                keep[:, 0] &= ~(drop & ~text)
        return keep

    def forward(self, batch: dict, mode: str = "both") -> dict:
        self.check(batch, mode)
        parts, masks = [], []
        if mode in ("both", "audio"):
            a, amask = self._audio(batch)
            parts.append(a + sinusoidal(a.shape[1], a.shape[2], a.device, a.dtype) + self.modality_type.weight[0])
            masks.append(amask)
        if mode in ("both", "text"):
            t, tmask = self._text(batch)
            parts.append(t + sinusoidal(t.shape[1], t.shape[2], t.device, t.dtype) + self.modality_type.weight[1])
            masks.append(tmask)
        B = parts[0].shape[0]
        out = {}
        if mode == "both":
            keep = self._keep(batch, B, parts[0].device)
            masks = [masks[0] & keep[:, :1], masks[1] & keep[:, 1:]]
            out["modality_keep"] = keep
        memory = torch.cat(parts, dim=1)
        valid = torch.cat(masks, dim=1)
        q = self.queries.unsqueeze(0).expand(B, -1, -1)
        tokens = self.decoder(q, memory, memory_key_padding_mask=~valid)
        out["logits"] = self.head(self.pool(tokens))
        return out
