"""A3: wav2vec2 + BERT, feature-level fusion (Ekong et al. 2023).

Speech: wav2vec2.0 (fine-tuned) on the waveform -> mask-aware mean over real frames (optionally a
learned weighted sum of hidden layers, spec "layer: weighted"; CNN feature encoder can be frozen).
Text: BERT [CLS] / pooled. Fusion: concatenation -> MLP classifier.
Audio-only / text-only inference: unimodal heads on each pooled vector ("audio_logits",
"text_logits"), trained jointly with weight model.aux_weight; in a unimodal mode they give "logits".

Cached-embedding variant (preset ``inputs`` contains "speech_emb", e.g. the ``offline`` preset):
the frozen speech encoder ran once per utterance in the features step, and the speech vector is
built from the batch's cached embeddings: the encoder's layer statistics ("speech_layers" [B,L,2H],
mean+std per layer, standardised per feature) mixed by learned softmax weights
(``speech_emb.layer_mix: weighted``) or kept side by side (``concat``), the other encoders' utterance vectors
("speech_vec", e.g. the GE2E speaker embedding) and, when the preset asks, attention pooling over
cached frames ("speech_emb"). Dimensions come from ``model.speech_emb`` {layers, layer_dim,
vec_dim, frame_dim}. Without "text" in the inputs the model is speech-only ("both" = "audio").
Training-time regularisation on the cached vectors: Gaussian noise (emb_noise), mixup (mixup_alpha).
"""

from __future__ import annotations

import torch
from torch import nn

from emoflow.audio.encoders import load_speech_encoder
from emoflow.models.base import AttentionPool, EmotionModel, drop_unused_pooler, encode_text, masked_mean, mlp
from emoflow.models.registry import register
from emoflow.text.encoders import load_text_encoder


def _standardise(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm standardisation; a single-row training batch uses the running statistics."""
    if norm.training and x.shape[0] < 2:
        return torch.nn.functional.batch_norm(x, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
    return norm(x)


@register("a3")
class A3(EmotionModel):
    inputs = {"wave", "text"}
    modes = ("both", "audio", "text")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        m = self.preset["model"]
        C = self.num_classes
        dropout = float(m.get("dropout", 0.1))
        declared = set(self.preset.get("inputs") or ["wave", "text"])
        self.cached = "speech_emb" in declared
        self.inputs = {"speech_emb", "text"} & declared if self.cached else {"wave", "text"}
        self.has_text = "text" in self.inputs
        if not self.has_text and not self.cached:
            raise ValueError("a3: a preset without text needs cached speech embeddings (inputs: [speech_emb])")
        self.modes = ("both", "audio", "text") if self.has_text else ("both", "audio")
        if self.cached:
            e = m.get("speech_emb") or {}
            self.emb_layers, layer_dim = int(e.get("layers", 0)), int(e.get("layer_dim", 0))
            vec_dim, frame_dim = int(e.get("vec_dim", 0)), int(e.get("frame_dim", 0))
            self.vec_dim = vec_dim
            if not (self.emb_layers and layer_dim) and not vec_dim and not frame_dim:
                raise ValueError("a3: model.speech_emb must give layers+layer_dim, vec_dim and/or frame_dim")
            # "weighted": learned softmax mix of the layers (layer_dim values); "concat": every layer kept
            self.layer_mix = e.get("layer_mix", "weighted")
            if self.layer_mix not in ("weighted", "concat"):
                raise ValueError(f"a3: speech_emb.layer_mix must be 'weighted' or 'concat', got {self.layer_mix!r}")
            self.layer_weights = (nn.Parameter(torch.zeros(self.emb_layers))
                                  if self.emb_layers and self.layer_mix == "weighted" else None)
            self.frame_pool = AttentionPool(frame_dim, int(e.get("pool_hidden", 128))) if frame_dim else None
            mixed = layer_dim * (self.emb_layers if self.layer_mix == "concat" else 1) if self.emb_layers else 0
            h_a = mixed + vec_dim + frame_dim
            self.emb_dim = h_a
            # per-feature standardisation with training statistics (cached encoder features have
            # very different scales per layer and dimension), before the learned layer mix
            self.layers_norm = nn.BatchNorm1d(self.emb_layers * layer_dim, affine=False) if self.emb_layers else None
            self.vec_norm = nn.BatchNorm1d(vec_dim, affine=False) if vec_dim else None
            hid = m.get("speech_hidden")
            self.speech_proj = nn.Sequential(nn.Dropout(float(m.get("input_dropout", 0.0))), nn.Linear(h_a, int(hid)),
                                             nn.GELU()) if hid else nn.Identity()
            h_a = int(hid) if hid else h_a
            self.emb_noise = float(m.get("emb_noise", 0.0))
            self.mixup_alpha = float(m.get("mixup_alpha", 0.0))
            self.speech_encoder = None
        else:
            self.speech_encoder = load_speech_encoder(m["speech_encoder"])
            h_a = self.speech_encoder.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.audio_head = nn.Linear(h_a, C)
        if self.has_text:
            spec = m["text_encoder"]
            self.tokenizer, self.text_encoder = load_text_encoder(spec)
            self.text_pooling = spec.get("pool", "cls")
            drop_unused_pooler(self.text_encoder, self.text_pooling)
            h_t = self.text_encoder.config.hidden_size
            self.classifier = mlp([h_a + h_t, *m.get("mlp_hidden", [256]), C], dropout=dropout)
            self.text_head = nn.Linear(h_t, C)
        else:
            self.text_encoder = None
            self.audio_head = mlp([h_a, *m.get("mlp_hidden", [256]), C], dropout=dropout)

    def encoders(self) -> dict[str, nn.Module]:
        out = {}
        if self.text_encoder is not None:
            out["text_encoder"] = self.text_encoder
        if self.speech_encoder is not None:
            out["speech_encoder"] = self.speech_encoder
        return out

    def check(self, batch: dict, mode: str) -> None:
        super().check(batch, mode)
        if self.cached and mode in ("both", "audio"):
            need = (["speech_layers"] if self.emb_layers else []) + (["speech_vec"] if self.vec_dim else []) + (["speech_emb", "speech_emb_mask"]
                                                                     if self.frame_pool is not None else [])
            missing = [k for k in need if k not in batch]
            if missing:
                raise KeyError(f"a3 (mode {mode!r}) needs batch keys {missing} (cached embeddings: features step "
                               "with feature_config.encoders)")

    def cached_speech(self, batch: dict) -> torch.Tensor:
        """Speech vector [B, D] from cached embeddings (see module docstring)."""
        parts = []
        if self.emb_layers:
            layers = batch["speech_layers"]
            if layers.shape[1] != self.emb_layers:
                raise ValueError(f"a3: speech_layers has {layers.shape[1]} layers, preset says {self.emb_layers}")
            layers = _standardise(self.layers_norm, layers.flatten(1)).view_as(layers)
            if self.layer_mix == "concat":
                parts.append(layers.flatten(1))
            else:
                w = torch.softmax(self.layer_weights, 0).to(layers.dtype)
                parts.append((layers * w[None, :, None]).sum(1))
        if self.vec_dim:
            parts.append(_standardise(self.vec_norm, batch["speech_vec"]))
        if self.frame_pool is not None:
            parts.append(self.frame_pool(batch["speech_emb"], batch["speech_emb_mask"]))
        x = torch.cat(parts, 1)
        if x.shape[1] != self.emb_dim:
            raise ValueError(f"a3: cached speech vector has {x.shape[1]} values, preset dims give {self.emb_dim}")
        if self.training and self.emb_noise > 0:
            x = x + self.emb_noise * torch.randn_like(x)
        if self.training and self.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            perm = torch.randperm(x.shape[0], device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            self._mix = (perm, lam)
        return self.speech_proj(x)

    def compute_loss(self, out: dict, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
        mix = out.pop("mixup", None)
        if mix is None:
            return super().compute_loss(out, labels, class_weight)
        perm, lam = mix
        return (lam * super().compute_loss(out, labels, class_weight)
                + (1 - lam) * super().compute_loss(out, labels[perm], class_weight))

    def forward(self, batch: dict, mode: str = "both") -> dict:
        self.check(batch, mode)
        out = {}
        self._mix = None
        if mode in ("both", "audio"):
            if self.cached:
                a = self.dropout(self.cached_speech(batch))
            else:
                frames, fmask = self.speech_encoder(batch["wave"], batch["wave_mask"])
                a = self.dropout(masked_mean(frames, fmask))
            out["audio_logits"] = self.audio_head(a)
        if not self.has_text:
            out = {"logits": out["audio_logits"]}
        else:
            if mode in ("both", "text"):
                t = self.dropout(encode_text(self.text_encoder, batch, self.text_pooling))
                out["text_logits"] = self.text_head(t)
            if mode == "both":
                out["logits"] = self.classifier(torch.cat([a, t], dim=1))
            else:
                out["logits"] = out["audio_logits" if mode == "audio" else "text_logits"]
        if self._mix is not None:
            out["mixup"] = self._mix
        return out
