"""A2: speaker-ResNet34 + fine-tuned BERT, late score fusion (Padi et al. 2022).

Speech: a speaker-recognition ResNet34 (``emoflow.models.speaker``: BasicBlocks [3,4,6,3], 32
channels in the first block, BatchNorm, statistics pooling over real frames, FC embedding) ->
FC layers -> speech logits; variable-length input at evaluation. Transfer (paper §3.2.1): the
network pretrained on speaker recognition (``model.speech.checkpoint``: a WeSpeaker VoxCeleb
ResNet34 hub id, folder, file or s3:// mirror, or one from ``emoflow pretrain-speaker``) gives the
convolutions; its front-end (WeSpeaker: 80-dim Kaldi fbank with mean normalisation, computed in the
model from the waveform), channels and activation (ReLU for WeSpeaker) follow the checkpoint;
``transfer: conv`` replaces its FC (embedding) layer with a new random one as the paper does,
``transfer: all`` keeps it. ``mode: linear_probe`` trains the FC layers only (refused without a
checkpoint), ``finetune`` trains everything with two learning rates (groups ``speech_fc`` and
``speech_backbone``). In training the speech branch sees random T-frame chunks
(``chunk_frames``) and ``augment_copies`` SpecAugment-ed copies of each segment.
Without a checkpoint the network the preset declares trains from scratch (``frontend: features``,
the default, takes the features step's log-mel: input ``logmel``; ``activation`` prelu by default).
Text: BERT-base-uncased -> FC (hidden x C) -> text logits.
Fusion (scores): S = w1 log p_speech + (1 - w1) log p_text ("weighted", w1 grid-searched on a
held-out part of the training data with `fit_fusion_weight`) and the z-normalised equal-weight
variant S = 0.5 (log p_s - mu_s) / sd_s + 0.5 (log p_t - mu_t) / sd_t ("znorm", mu / sd per class
from the same held-out part). Both are returned ("logits_weighted", "logits_znorm"); "logits" is
the one named by preset model.fusion.

Speaker-encoder transfer without a ResNet34 checkpoint (``model.speech.backbone``):
"speaker_encoder" runs a speech encoder spec (``model.speech.encoder``, e.g. {source: resemblyzer},
the GE2E speaker encoder; frozen in linear_probe mode, fine-tuned in finetune mode) on the
waveform and uses its utterance embedding; "cached" uses the cached speaker embedding of the
features step (inputs [speech_emb, text], batch "speech_vec" of width ``model.speech.embed_dim``).
The default "resnet34" is the paper's ResNet34.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoflow.models.base import (EmotionModel, binary_cross_entropy, cross_entropy, drop_unused_pooler, encode_text,
                                 masked_mean_std, mlp)
from emoflow.models.registry import register
from emoflow.models.speaker import SpeakerEncoder, preset_network
from emoflow.models.speaker_checkpoint import read_speaker_checkpoint
from emoflow.text.encoders import load_text_encoder

log = logging.getLogger("emoflow.models.a2")


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in y_true."""
    classes = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


def fit_fusion_weight(audio_logp, text_logp, labels, grid=None, metric: str = "ua") -> dict:
    """Fit both late-fusion variants on held-out TRAINING data only.

    audio_logp, text_logp: [N,C] log-probabilities of the held-out part; labels [N] ints.
    Returns {"w1", "score", "scores" {w1: score}, "znorm": {mu_a, sd_a, mu_t, sd_t} (per class),
    "znorm_score", "metric", "n"}. w1 maximises the metric ("ua" or "wa"); ties -> the w1 nearest 0.5.
    """
    a = np.asarray(audio_logp, dtype=np.float64)
    t = np.asarray(text_logp, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if a.ndim != 2 or a.shape != t.shape or y.shape != (a.shape[0],):
        raise ValueError(f"shapes must be [N,C],[N,C],[N]; got {a.shape}, {t.shape}, {y.shape}")
    if a.shape[0] < 2:
        raise ValueError("need at least 2 held-out examples to fit the fusion")
    if metric not in ("ua", "wa"):
        raise ValueError(f"metric must be 'ua' or 'wa', got {metric!r}")
    score_fn = unweighted_accuracy if metric == "ua" else (lambda yt, yp: float((yt == yp).mean()))
    grid = np.linspace(0.0, 1.0, 21) if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.size == 0 or (grid < 0).any() or (grid > 1).any():
        raise ValueError(f"grid must be non-empty values in [0,1], got {grid.tolist()}")
    scores = {float(w): score_fn(y, (w * a + (1 - w) * t).argmax(1)) for w in grid}
    best = max(scores.values())
    w1 = min((w for w, s in scores.items() if s == best), key=lambda w: abs(w - 0.5))
    mu_a, sd_a = a.mean(0), a.std(0) + 1e-6
    mu_t, sd_t = t.mean(0), t.std(0) + 1e-6
    z = 0.5 * (a - mu_a) / sd_a + 0.5 * (t - mu_t) / sd_t
    return {
        "w1": float(w1),
        "score": best,
        "scores": scores,
        "znorm": {"mu_a": mu_a.tolist(), "sd_a": sd_a.tolist(), "mu_t": mu_t.tolist(), "sd_t": sd_t.tolist()},
        "znorm_score": score_fn(y, z.argmax(1)),
        "metric": metric,
        "n": int(a.shape[0]),
    }


@register("a2")
class A2(EmotionModel):
    inputs = {"logmel", "text"}
    late_fusion = True
    modes = ("both", "audio", "text")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        m = self.preset["model"]
        C = self.num_classes
        sp = m.get("speech", {})
        n_mels = int(self.preset.get("features", {}).get("logmel", {}).get("n_mels", 128))
        self.backbone = sp.get("backbone", "resnet34")
        self.speech_mode = sp.get("mode", "finetune")
        if self.speech_mode not in ("finetune", "linear_probe"):
            raise ValueError(f"model.speech.mode must be 'finetune' or 'linear_probe', got {self.speech_mode!r}")
        if self.backbone == "resnet34":
            self.speech, self.speaker_checkpoint = self._speaker_network(sp, n_mels)
            self.inputs = {self.speech.input_key, "text"}
            embed_dim = self.speech.net.embed_dim
        elif self.backbone == "speaker_encoder":
            from emoflow.audio.encoders import load_speech_encoder

            self.inputs = {"wave", "text"}
            spec = dict(sp.get("encoder") or {"source": "resemblyzer"})
            if str(spec.get("source", "")).startswith("resemblyzer"):
                spec["freeze"] = self.speech_mode == "linear_probe"
            self.speech = load_speech_encoder(spec)
            embed_dim = self.speech.hidden_size
        elif self.backbone == "cached":
            self.inputs = {"speech_emb", "text"}
            self.speech = nn.Identity()
            embed_dim = int(sp.get("embed_dim", 256))
        else:
            raise ValueError(f"model.speech.backbone must be 'resnet34', 'speaker_encoder' or 'cached', got {self.backbone!r}")
        self.speech_head = mlp([embed_dim, *sp.get("head_hidden", [256]), C], dropout=float(sp.get("dropout", 0.2)), act=nn.PReLU)
        if self.speech_mode == "linear_probe":
            if self.backbone == "resnet34" and self.speaker_checkpoint is None:
                raise ValueError(
                    "a2: model.speech.mode linear_probe freezes the speaker ResNet, but no model.speech.checkpoint "
                    "is set: it would train a head on random convolutions. Give a pretrained speaker checkpoint "
                    "(a WeSpeaker VoxCeleb ResNet34 hub id, folder or s3:// mirror, or one from "
                    "`emoflow pretrain-speaker`), or use mode finetune")
            frozen = self.speech.net.conv_parameters() if self.backbone == "resnet34" else self.speech.parameters()
            for p in frozen:  # linear probing: only the new FC layers train
                p.requires_grad = False
        spec = m["text_encoder"]
        self.tokenizer, self.text_encoder = load_text_encoder(spec)
        self.text_pooling = spec.get("pool", "pooler")
        drop_unused_pooler(self.text_encoder, self.text_pooling)
        self.text_dropout = nn.Dropout(float(m.get("text", {}).get("dropout", 0.1)))
        self.text_head = nn.Linear(self.text_encoder.config.hidden_size, C)  # FC (768 x C)
        self.fusion = m.get("fusion", "weighted")
        if self.fusion not in ("weighted", "znorm"):
            raise ValueError(f"model.fusion must be 'weighted' or 'znorm', got {self.fusion!r}")
        # fusion parameters: fitted on held-out training data, saved with the weights
        self.register_buffer("fusion_w1", torch.tensor(float(m.get("w1", 0.5))))
        for name in ("mu_a", "mu_t"):
            self.register_buffer(f"z_{name}", torch.zeros(C))
        for name in ("sd_a", "sd_t"):
            self.register_buffer(f"z_{name}", torch.ones(C))

    def encoders(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder}

    def speech_frontend(self) -> nn.Module:
        return self.speech

    def _speaker_network(self, sp: dict, n_mels: int) -> tuple[SpeakerEncoder, dict | None]:
        """The speaker ResNet: the preset's network, or the checkpoint's (its front-end, channels,
        activation; the embedding size too with ``transfer: all``) with its weights loaded; and
        what was loaded (None without a checkpoint).

        Once loaded, the preset records the network it built and the source as
        ``checkpoint_loaded`` (a saved model is rebuilt from that, without the checkpoint)."""
        transfer = sp.get("transfer", "conv")
        if transfer not in ("conv", "all"):
            raise ValueError(f"model.speech.transfer must be 'conv' or 'all', got {transfer!r}")
        cfg = preset_network(sp, n_mels)
        ckpt = None
        if sp.get("checkpoint") and torch.empty(0).device.type != "meta":  # meta: parameter counts only
            ckpt = read_speaker_checkpoint(sp["checkpoint"])
            cfg = ckpt.config if transfer == "all" else dataclasses.replace(ckpt.config, embed_dim=cfg.embed_dim)
        views = {"chunk_frames": sp.get("chunk_frames"), "copies": int(sp.get("augment_copies") or 0),
                 "specaugment": sp.get("specaugment")}
        encoder = SpeakerEncoder(cfg, **views)
        info = None
        if ckpt is not None:
            info = ckpt.load_into(encoder.net, transfer)
            log.info("a2: speaker checkpoint %s: %d tensors loaded, new %s, set aside %s; front-end %s, %s",
                     info["source"], len(info["loaded"]), info["kept_new"] or "none", info["ignored"] or "none",
                     cfg.frontend or "features step log-mel", cfg.activation)
            record = self.preset["model"]["speech"]
            record.update({"base_channels": cfg.base_channels, "blocks": list(cfg.blocks), "embed_dim": cfg.embed_dim,
                           "activation": cfg.activation, "frontend": cfg.frontend or "features",
                           "checkpoint_loaded": record.pop("checkpoint")})
            if cfg.frontend is None:
                self.preset.setdefault("features", {}).setdefault("logmel", {})["n_mels"] = cfg.n_mels
        elif sp.get("checkpoint") or sp.get("checkpoint_loaded"):
            info = {"source": sp.get("checkpoint") or sp.get("checkpoint_loaded")}
        return encoder, info

    def train(self, mode: bool = True):
        super().train(mode)
        if self.speech_mode == "linear_probe":
            net = self.speech.net if self.backbone == "resnet34" else self.speech
            net.eval()  # frozen BatchNorm statistics stay fixed
            if self.backbone == "resnet34":
                self.speech.net.seg_1.train(mode)
        return self

    def set_fusion(self, fit: dict) -> None:
        """Store a fit_fusion_weight() result (w1 and z-norm statistics) in the model."""
        self.fusion_w1.fill_(float(fit["w1"]))
        for key in ("mu_a", "sd_a", "mu_t", "sd_t"):
            getattr(self, f"z_{key}").copy_(torch.as_tensor(fit["znorm"][key], dtype=torch.float32))

    def fit_fusion(self, audio_logp, text_logp, labels, grid=None, metric: str = "ua") -> dict:
        """fit_fusion_weight on held-out training outputs, then set_fusion; returns the fit."""
        fit = fit_fusion_weight(audio_logp, text_logp, labels, grid, metric)
        self.set_fusion(fit)
        return fit

    def forward(self, batch: dict, mode: str = "both") -> dict:
        self.check(batch, mode)
        out = {}
        if mode in ("both", "audio"):
            # in training the speech branch may see augmented copies after the batch ([B x (1 + copies)]):
            # its loss uses them all, the scores below the first B
            out["audio_logits"] = self.speech_head(self._speech_embedding(batch))
        if mode in ("both", "text"):
            h = encode_text(self.text_encoder, batch, self.text_pooling)
            out["text_logits"] = self.text_head(self.text_dropout(h))
        n = out["audio_logits"].shape[0] // (1 + self._copies()) if "audio_logits" in out else None
        if mode == "audio":
            out["logits"] = F.log_softmax(out["audio_logits"][:n], dim=1)
        elif mode == "text":
            out["logits"] = F.log_softmax(out["text_logits"], dim=1)
        else:
            lp_a = F.log_softmax(out["audio_logits"][:n], dim=1)
            lp_t = F.log_softmax(out["text_logits"], dim=1)
            w1 = self.fusion_w1
            out["logits_weighted"] = w1 * lp_a + (1 - w1) * lp_t
            out["logits_znorm"] = 0.5 * (lp_a - self.z_mu_a) / self.z_sd_a + 0.5 * (lp_t - self.z_mu_t) / self.z_sd_t
            out["logits"] = out["logits_weighted"] if self.fusion == "weighted" else out["logits_znorm"]
        return out

    def _speech_embedding(self, batch: dict) -> torch.Tensor:
        if self.backbone == "resnet34":
            return self.speech(batch)  # in training: the batch and its augmented copies
        if self.backbone == "cached":
            if "speech_vec" not in batch:
                raise KeyError("a2 (backbone cached) needs batch key 'speech_vec' (features step with encoders)")
            return batch["speech_vec"]
        if hasattr(self.speech, "pooled"):
            return self.speech.pooled(batch["wave"], batch["wave_mask"])
        frames, fmask = self.speech(batch["wave"], batch["wave_mask"])
        return masked_mean_std(frames, fmask)[0]

    def _copies(self) -> int:
        """Augmented copies the speech branch adds to a training batch."""
        return self.speech.copies if self.backbone == "resnet34" and self.speech.training else 0

    def compute_loss(self, out: dict, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Each branch is trained on its own (score-level fusion is fitted afterwards); the speech
        loss covers each segment and its augmented copies."""
        multi_hot = labels.is_floating_point() and labels.dim() == 2  # multi-label training: BCE
        loss_of = binary_cross_entropy if multi_hot else cross_entropy
        losses = []
        for key in ("audio_logits", "text_logits"):
            if key in out:
                copies = out[key].shape[0] // labels.shape[0]
                losses.append(loss_of(out[key], labels.repeat(copies, *[1] * (labels.dim() - 1)), class_weight))
        return sum(losses)

    group_keys = EmotionModel.group_keys | {"lr_by_mode"}

    def param_groups(self):
        """The preset's param_groups; a group's ``lr_by_mode`` {linear_probe: lr, finetune: lr}
        picks its learning rate by ``model.speech.mode``."""
        groups = super().param_groups()
        for g in groups:
            lr_by_mode = g.pop("lr_by_mode", None)
            if lr_by_mode:
                g["lr"] = float(lr_by_mode[self.speech_mode])
        return groups
