"""A2: speaker-ResNet34 + fine-tuned BERT, late score fusion (Padi et al. 2022).

Speech: 128-d log-mel (segment mean/var normalised by the feature step) -> ResNet34 (BasicBlocks
[3,4,6,3], 32 channels in the first block, PReLU, BatchNorm) -> statistics pooling (mean || std over
real frames) -> 512-d embedding -> FC layers -> speech logits. Variable-length input.
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
The default "resnet34" is the paper's log-mel ResNet34.

Speaker-recognition checkpoint mapping (`load_speaker_checkpoint`): module names follow the
WeSpeaker ResNet34 (`wespeaker/models/resnet.py`), input laid out [B, 1, F, T] as there:
    conv1.weight, bn1.*                       -> speech.conv1.weight, speech.bn1.*
    layer{1..4}.{i}.conv{1,2}.weight, .bn{1,2}.* -> speech.layer{1..4}.{i}.conv{1,2}.weight, ...
    layer{2..4}.0.shortcut.{0,1}.*            -> speech.layer{2..4}.0.shortcut.{0,1}.*
    seg_1.weight, seg_1.bias (stats -> embedding) -> speech.seg_1.*
Prefixes "module.", "model.", "speaker_encoder.", "front." are stripped; classifier/margin heads
("projection.*", "head.*", "seg_2.*", "seg_bn_1.*") are ignored. PReLU slopes (speech.*.act*) are
absent from ReLU checkpoints and stay at 0.25 init; their names are reported as missing.
Shapes must match (n_mels and channel widths of the preset = those of the checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoflow.models.base import (
    EmotionModel,
    cross_entropy,
    MaskedBatchNorm2d,
    drop_unused_pooler,
    encode_text,
    lengths_from_mask,
    masked_mean_std,
    mlp,
    time_mask,
    zero_beyond,
)
from emoflow.models.registry import register
from emoflow.text.encoders import load_text_encoder

T_DIM = 3  # time axis of [B, C, F, T]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with PReLU and masked BatchNorm."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(planes)
        self.act1 = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = MaskedBatchNorm2d(planes)
        self.act2 = nn.PReLU(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), MaskedBatchNorm2d(planes))
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = zero_beyond(x, lengths, T_DIM)
        new = (lengths - 1) // self.stride + 1
        h = self.act1(self.bn1(self.conv1(x), new, T_DIM))
        h = self.bn2(self.conv2(zero_beyond(h, new, T_DIM)), new, T_DIM)
        sc = x if self.shortcut is None else self.shortcut[1](self.shortcut[0](x), new, T_DIM)
        return self.act2(h + sc), new


class SpeakerResNet(nn.Module):
    """ResNet34 speaker encoder: [B,T,F] log-mel + mask -> [B, embed_dim] embedding."""

    def __init__(self, n_mels: int = 128, base: int = 32, blocks=(3, 4, 6, 3), embed_dim: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(1, base, 3, stride=1, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(base)
        self.act1 = nn.PReLU(base)
        planes, in_planes, f = base, base, n_mels
        for i, n in enumerate(blocks):
            stride = 1 if i == 0 else 2
            layer = nn.ModuleList()
            for j in range(n):
                layer.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", layer)
            if stride == 2:
                f = (f - 1) // 2 + 1
            planes *= 2
        self.n_layers = len(blocks)
        self.stats_dim = 2 * in_planes * f
        self.seg_1 = nn.Linear(self.stats_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, logmel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = lengths_from_mask(mask, "logmel_mask")
        x = logmel.transpose(1, 2).unsqueeze(1)  # [B,1,F,T]
        x = self.act1(self.bn1(self.conv1(zero_beyond(x, lengths, T_DIM)), lengths, T_DIM))
        for i in range(self.n_layers):
            for block in getattr(self, f"layer{i + 1}"):
                x, lengths = block(x, lengths)
        frames = x.flatten(1, 2).transpose(1, 2)  # [B,T',C*F']
        mean, std = masked_mean_std(frames, time_mask(lengths, frames.shape[1]))
        return self.seg_1(torch.cat([mean, std], dim=1))


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
            self.speech = SpeakerResNet(
                n_mels, base=int(sp.get("base_channels", 32)), blocks=tuple(sp.get("blocks", [3, 4, 6, 3])), embed_dim=int(sp.get("embed_dim", 512))
            )
            embed_dim = self.speech.embed_dim
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
            for p in self.speech.parameters():  # frozen conv stack and embedding; only the FC head trains
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

    def train(self, mode: bool = True):
        super().train(mode)
        if self.speech_mode == "linear_probe":
            self.speech.eval()  # frozen BatchNorm statistics stay fixed
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
            out["audio_logits"] = self.speech_head(self._speech_embedding(batch))
        if mode in ("both", "text"):
            h = encode_text(self.text_encoder, batch, self.text_pooling)
            out["text_logits"] = self.text_head(self.text_dropout(h))
        if mode == "audio":
            out["logits"] = F.log_softmax(out["audio_logits"], dim=1)
        elif mode == "text":
            out["logits"] = F.log_softmax(out["text_logits"], dim=1)
        else:
            lp_a = F.log_softmax(out["audio_logits"], dim=1)
            lp_t = F.log_softmax(out["text_logits"], dim=1)
            w1 = self.fusion_w1
            out["logits_weighted"] = w1 * lp_a + (1 - w1) * lp_t
            out["logits_znorm"] = 0.5 * (lp_a - self.z_mu_a) / self.z_sd_a + 0.5 * (lp_t - self.z_mu_t) / self.z_sd_t
            out["logits"] = out["logits_weighted"] if self.fusion == "weighted" else out["logits_znorm"]
        return out

    def _speech_embedding(self, batch: dict) -> torch.Tensor:
        if self.backbone == "resnet34":
            return self.speech(batch["logmel"], batch["logmel_mask"])
        if self.backbone == "cached":
            if "speech_vec" not in batch:
                raise KeyError("a2 (backbone cached) needs batch key 'speech_vec' (features step with encoders)")
            return batch["speech_vec"]
        if hasattr(self.speech, "pooled"):
            return self.speech.pooled(batch["wave"], batch["wave_mask"])
        frames, fmask = self.speech(batch["wave"], batch["wave_mask"])
        return masked_mean_std(frames, fmask)[0]

    def compute_loss(self, out: dict, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Each branch is trained on its own (score-level fusion is fitted afterwards)."""
        losses = [cross_entropy(out[k], labels, class_weight) for k in ("audio_logits", "text_logits") if k in out]
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


SPEAKER_PREFIXES = ("module.", "model.", "speaker_encoder.", "front.")
SPEAKER_IGNORED = ("projection.", "head.", "seg_2.", "seg_bn_1.", "classifier.")


def load_speaker_checkpoint(model: A2, path: str | Path) -> dict:
    """Load a speaker-recognition ResNet34 checkpoint into model.speech (mapping in the module doc).

    Accepts .safetensors or a torch file (read with weights_only=True; a dict holding the
    state dict under "state_dict"/"model" is unwrapped). Returns {"loaded", "missing", "ignored"}.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for k in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(k), dict):
                state = state[k]
    own = model.speech.state_dict()
    mapped, ignored = {}, []
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for p in SPEAKER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        if k.startswith(SPEAKER_IGNORED) or k not in own:
            ignored.append(key)
            continue
        if tuple(value.shape) != tuple(own[k].shape):
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, model expects speech.{k} {tuple(own[k].shape)}")
        mapped[k] = value
    if not mapped:
        raise ValueError(f"{path}: no ResNet34 speaker weights recognised (first keys: {list(state)[:5]})")
    model.speech.load_state_dict(mapped, strict=False)
    missing = [f"speech.{k}" for k in own if k not in mapped]
    return {"loaded": sorted(mapped), "missing": missing, "ignored": ignored}
