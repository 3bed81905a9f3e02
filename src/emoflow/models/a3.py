"""A3: wav2vec2 + BERT, feature-level fusion (Ekong et al. 2023).

Speech: wav2vec2.0 (fine-tuned) on the waveform -> mask-aware mean over real frames (optionally a
learned weighted sum of hidden layers, spec "layer: weighted"; CNN feature encoder can be frozen).
Text: BERT [CLS] / pooled. Fusion: concatenation -> MLP classifier.
Audio-only / text-only inference: unimodal heads on each pooled vector ("audio_logits",
"text_logits"), trained jointly with weight model.aux_weight; in a unimodal mode they give "logits".
"""

from __future__ import annotations

import torch
from torch import nn

from emoflow.audio.encoders import load_speech_encoder
from emoflow.models.base import EmotionModel, drop_unused_pooler, encode_text, masked_mean, mlp
from emoflow.models.registry import register
from emoflow.text.encoders import load_text_encoder


@register("a3")
class A3(EmotionModel):
    inputs = {"wave", "text"}
    modes = ("both", "audio", "text")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        m = self.preset["model"]
        C = self.num_classes
        dropout = float(m.get("dropout", 0.1))
        self.speech_encoder = load_speech_encoder(m["speech_encoder"])
        spec = m["text_encoder"]
        self.tokenizer, self.text_encoder = load_text_encoder(spec)
        self.text_pooling = spec.get("pool", "cls")
        drop_unused_pooler(self.text_encoder, self.text_pooling)
        h_a = self.speech_encoder.hidden_size
        h_t = self.text_encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.classifier = mlp([h_a + h_t, *m.get("mlp_hidden", [256]), C], dropout=dropout)
        self.audio_head = nn.Linear(h_a, C)
        self.text_head = nn.Linear(h_t, C)

    def encoders(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder, "speech_encoder": self.speech_encoder}

    def param_groups(self):
        """speech encoder / text encoder / heads, each with its own settings from train.groups."""
        heads = list(self.classifier.parameters()) + list(self.audio_head.parameters()) + list(self.text_head.parameters())
        return self._groups_from_preset(
            {"speech_encoder": list(self.speech_encoder.parameters()), "text_encoder": list(self.text_encoder.parameters()), "heads": heads}
        )

    def forward(self, batch: dict, mode: str = "both") -> dict:
        self.check(batch, mode)
        out = {}
        if mode in ("both", "audio"):
            frames, fmask = self.speech_encoder(batch["wave"], batch["wave_mask"])
            a = self.dropout(masked_mean(frames, fmask))
            out["audio_logits"] = self.audio_head(a)
        if mode in ("both", "text"):
            t = self.dropout(encode_text(self.text_encoder, batch, self.text_pooling))
            out["text_logits"] = self.text_head(t)
        if mode == "both":
            out["logits"] = self.classifier(torch.cat([a, t], dim=1))
        else:
            out["logits"] = out["audio_logits" if mode == "audio" else "text_logits"]
        return out
