"""Common interface of every emotion model, plus mask-aware building blocks.

Batch contract (see contracts): logmel [B,T,F] + logmel_mask [B,T] bool; wave [B,S] + wave_mask [B,S];
input_ids [B,L] + attention_mask [B,L]; dialogue [B] long; labels [B] long.
``forward(batch, mode)`` returns a dict with "logits" [B,C] and optionally "audio_logits",
"text_logits", "modality_weights" [B,2] (audio, text).
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoflow.audio.masks import lengths_from_mask, time_mask  # noqa: F401  (shared with encoders)

MODES = ("both", "audio", "text")


class EmotionModel(nn.Module):
    """Base class: holds the preset, labels, tokenizer; checks modes and batches.

    The hooks the trainer, saving and reporting call are declared here with defaults, so every
    architecture answers them (override what yours needs):

    - ``set_progress(p)``: fraction of training done, each step (schedules inside the model);
    - ``compute_loss(out, labels, class_weight=None)``: the training loss (an override must keep
      the ``class_weight`` parameter: checked when the subclass is defined);
    - ``param_groups()``: optimizer parameter groups;
    - ``encoders()``: pretrained encoders by preset key (their configs are saved with the model);
    - ``speech_frontend()``: the speech branch counted apart in ``emoflow models presets``, or None.
    """

    arch: str = ""
    inputs: set[str] = set()
    modes: tuple[str, ...] = MODES

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        loss = cls.__dict__.get("compute_loss")
        if loss is not None and "class_weight" not in inspect.signature(loss).parameters:
            raise TypeError(f"{cls.__name__}.compute_loss must take class_weight=None like "
                            "EmotionModel.compute_loss (the trainer passes train.class_weights)")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__()
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be a non-empty list of distinct names, got {labels!r}")
        self.preset = copy.deepcopy(preset)
        self.labels = list(labels)
        self.num_classes = len(labels)
        self.tokenizer = None
        self.max_length = int(self.preset.get("model", {}).get("max_length", 128))
        self.progress = 0.0
        self._eval_modules: list[str] = []  # frozen by train.param_groups: kept in eval mode

    # ------------------------------------------------------------------ text helpers
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize texts with the preset's max_length -> dict(input_ids, attention_mask) (long)."""
        if self.tokenizer is None:
            raise RuntimeError(f"model {self.arch!r} has no tokenizer")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            bad = texts if isinstance(texts, str) else next(t for t in texts if not isinstance(t, str))
            raise TypeError(f"tokenize expects a list of strings; bad item: {bad!r}")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    # ------------------------------------------------------------------ checks
    def check(self, batch: dict, mode: str) -> None:
        """Raise a clear error for an unsupported mode or a missing batch key."""
        if mode not in self.modes:
            raise ValueError(f"{self.arch}: mode {mode!r} not supported; choose from {self.modes}")
        need = []
        audio_keys = {"logmel": ("logmel", "logmel_mask"), "wave": ("wave", "wave_mask")}
        for inp in self.inputs:
            if inp in audio_keys and mode in ("both", "audio"):
                need += audio_keys[inp]
            if inp == "text" and mode in ("both", "text"):
                need += ["input_ids", "attention_mask"]
        missing = [k for k in need if k not in batch]
        if missing:
            raise KeyError(f"{self.arch} (mode {mode!r}) needs batch keys {missing}")

    # ------------------------------------------------------------------ training hooks
    def set_progress(self, progress: float) -> None:
        """Trainer calls this each step with the fraction of training done (0..1)."""
        self.progress = float(progress)

    def compute_loss(self, out: dict, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy (class-weighted when given) on "logits" plus aux_weight x the same on the
        per-modality logits when present. Multi-hot float ``labels`` [B, C] (multi-label training):
        BCE-with-logits instead, each logit on its own, ``class_weight`` then being the positive weight
        per emotion."""
        loss_of = binary_cross_entropy if labels.is_floating_point() and labels.dim() == 2 else cross_entropy
        loss = loss_of(out["logits"], labels, class_weight)
        w = float(self.preset.get("model", {}).get("aux_weight", 0.0))
        if w > 0:
            for key in ("audio_logits", "text_logits"):
                if key in out:
                    loss = loss + w * loss_of(out[key], labels, class_weight)
        return loss

    # score-level (late) fusion fitted on held-out training outputs, as A2's: such a model sets
    # late_fusion and implements fit_fusion / set_fusion; training/run.py calls them on every fold
    late_fusion: bool = False

    def fit_fusion(self, audio_logp, text_logp, labels, grid=None, metric: str = "ua") -> dict | None:
        """Fit the fusion of the per-modality scores on a fold's validation outputs, set it, and
        return the fit (None: no late fusion)."""
        return None

    def set_fusion(self, fit: dict) -> None:
        """Set a fusion fit (e.g. the folds' average for the final fit); nothing without late fusion."""

    def encoders(self) -> dict[str, nn.Module]:
        """Pretrained encoders by preset key ("text_encoder", "speech_encoder"); none by default."""
        return {}

    def speech_frontend(self) -> nn.Module | None:
        """The speech branch whose size `emoflow models presets` shows apart; None by default."""
        return None

    # keys a train.param_groups entry may set (subclasses may add their own, e.g. A2's lr_by_mode)
    group_keys: frozenset[str] = frozenset({"params", "optimizer", "lr", "weight_decay", "momentum", "freeze"})

    def _matched_groups(self) -> tuple[list[tuple[str, dict, list[str], list[tuple[str, nn.Parameter]]]], list]:
        """Parameters by preset ``train.param_groups`` (see ``param_groups``): [(group name,
        options, patterns, [(param name, param)])] in preset order, and the unmatched [(name, param)]."""
        train = self.preset.get("train") or {}
        if "groups" in train:
            raise ValueError(f"{self.arch}: train.groups is now train.param_groups ({{name: {{params: "
                             f"[module patterns], lr, weight_decay, freeze, optimizer}}}}); got groups {train['groups']!r}")
        spec = train.get("param_groups") or {}
        if not isinstance(spec, dict):
            raise ValueError(f"{self.arch}: train.param_groups must be a mapping name -> options, got {spec!r}")
        named = list(self.named_parameters())
        taken: set[str] = set()
        matched = []
        for gname, opts in spec.items():
            opts = dict(opts or {})
            unknown = sorted(set(opts) - self.group_keys)
            if unknown:
                raise ValueError(f"{self.arch}: train.param_groups.{gname} has unknown keys {unknown} "
                                 f"(known: {sorted(self.group_keys)})")
            patterns = opts.pop("params", gname)
            patterns = [patterns] if isinstance(patterns, str) else list(patterns)
            if not any(param_matches(n, pt) for n, _ in named for pt in patterns):
                top = sorted({n.split(".")[0] for n, _ in named})
                raise ValueError(f"{self.arch}: train.param_groups.{gname}: {patterns} match no parameter "
                                 f"(top-level modules: {top})")
            members = [(n, p) for n, p in named if n not in taken and any(param_matches(n, pt) for pt in patterns)]
            taken.update(n for n, _ in members)
            matched.append((str(gname), opts, patterns, members))
        return matched, [(n, p) for n, p in named if n not in taken]

    def freeze_param_groups(self) -> list[str]:
        """Freeze the parameters of every ``param_groups`` entry with ``freeze: true`` (build_model
        calls this once the model is built); a pattern naming a whole module also keeps that
        module in eval mode while the model trains (no dropout, fixed BatchNorm statistics: a
        frozen feature extractor). Returns the frozen parameter names."""
        frozen, modules = [], dict(self.named_modules())
        if not (self.preset.get("train") or {}).get("param_groups"):
            return frozen  # (nothing to freeze; a model saved with the old train.groups still loads)
        for _, opts, patterns, members in self._matched_groups()[0]:
            if opts.get("freeze"):
                for n, p in members:
                    p.requires_grad_(False)
                    frozen.append(n)
                for pattern in patterns:
                    if pattern in modules and pattern not in self._eval_modules:
                        self._eval_modules.append(pattern)
        if self._eval_modules:
            self.train(self.training)
        return frozen

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._eval_modules:
            self.get_submodule(name).eval()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups from the preset: dicts with name, params, optimizer, lr,
        weight_decay (+ momentum).

        ``train.param_groups`` maps a group name to options ``{params: <pattern or list>, lr,
        weight_decay, momentum, optimizer, freeze}``; a pattern is a module name ("text_encoder":
        every parameter under it) or a glob over parameter names ("text_encoder.encoder.layer.1?.*");
        without ``params`` the group name is the pattern. Each parameter joins the first group
        that matches it; unset options and the parameters no group matches ("rest") take the
        ``train`` section's optimizer, lr, weight_decay (and momentum). Frozen parameters
        (``freeze: true``, or frozen by the model) are in no group.
        """
        train = self.preset.get("train") or {}
        defaults: dict[str, Any] = {"optimizer": train.get("optimizer", "adam"), "lr": train.get("lr", 1e-3),
                                    "weight_decay": train.get("weight_decay", 0.0)}
        if "momentum" in train:
            defaults["momentum"] = train["momentum"]
        matched, rest = self._matched_groups()
        groups = []
        for gname, opts, _, members in [*matched, ("rest", {}, [], rest)]:
            params = [p for _, p in members if p.requires_grad]
            if not params:
                continue
            g = {**defaults, **{k: v for k, v in opts.items() if k != "freeze"}}
            for key in ("lr", "weight_decay", "momentum"):
                if key in g:
                    g[key] = float(g[key])
            groups.append({"name": gname, "params": params, **g})
        return groups


def param_matches(name: str, pattern: str) -> bool:
    """A parameter name matches a module name (itself or anything under it) or a glob."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def build_optimizers(model: EmotionModel, groups: list[dict] | None = None) -> list[torch.optim.Optimizer]:
    """One torch optimizer per optimizer type in ``groups`` (default: model.param_groups()), e.g.
    SGD speech + Adam text."""
    by_type: dict[str, list[dict]] = {}
    for g in model.param_groups() if groups is None else groups:
        g = dict(g)
        by_type.setdefault(str(g.pop("optimizer")).lower(), []).append(g)
    opts = []
    for kind, groups in by_type.items():
        if kind == "adam":
            opts.append(torch.optim.Adam(groups))
        elif kind == "adamw":
            opts.append(torch.optim.AdamW(groups))
        elif kind == "sgd":
            for g in groups:
                g.setdefault("momentum", 0.9)
            opts.append(torch.optim.SGD(groups))
        else:
            raise ValueError(f"unknown optimizer {kind!r} (adam, adamw, sgd)")
    return opts


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy in float32 (also under autocast), class-weighted when a weight is given."""
    if class_weight is not None:
        class_weight = class_weight.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=class_weight)


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                         pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits of multi-hot targets [B, C] in float32 (also under autocast); ``pos_weight``
    [C] weighs each emotion's positives."""
    if pos_weight is not None:
        pos_weight = pos_weight.to(logits.device, torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


# ---------------------------------------------------------------------- mask helpers
def zero_beyond(x: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero every position of x along dim at or beyond each sample's length (batch dim 0)."""
    m = time_mask(lengths, x.shape[dim]).to(x.dtype)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    return x * m.view(shape)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B,T,D], mask [B,T] -> [B,D] mean over real frames (zero when none)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B,T,D], mask [B,T] -> mean, std over real frames."""
    m = mask.to(x.dtype).unsqueeze(-1)
    n = m.sum(1).clamp(min=1.0)
    mean = (x * m).sum(1) / n
    var = (((x - mean.unsqueeze(1)) ** 2) * m).sum(1) / n
    return mean, torch.sqrt(var.clamp(min=eps))


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics use only real (unpadded) time positions."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, time_dim: int = 2) -> torch.Tensor:
        if lengths is None or not self.training:
            return super().forward(x)
        dtype = x.dtype
        x = x.float()  # statistics in float32 (also under autocast)
        shape = [x.shape[0], 1, 1, 1]
        shape[time_dim] = x.shape[time_dim]
        m = time_mask(lengths, x.shape[time_dim]).to(x.dtype).view(shape)
        other = x.shape[5 - time_dim]  # the non-time spatial dim (2 <-> 3)
        n = m.sum() * other
        mean = (x * m).sum(dim=(0, 2, 3)) / n
        var = (((x - mean.view(1, -1, 1, 1)) ** 2) * m).sum(dim=(0, 2, 3)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - mom).add_(mom * mean)
                self.running_var.mul_(1 - mom).add_(mom * var * n / (n - 1).clamp(min=1))
        y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        y = y.to(dtype)
        return y


class AttentionPool(nn.Module):
    """Self-attention pooling: a = softmax(w2 tanh(W1 x)) over real positions; returns sum a x."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = self.score(torch.tanh(self.proj(x))).squeeze(-1)
        if mask is not None:
            s = s.masked_fill(~mask.bool(), float("-inf"))
        a = torch.softmax(s, dim=-1)
        return (a.unsqueeze(-1) * x).sum(1)


def text_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "cls") -> torch.Tensor:
    """Pool token states [B,L,H]: "cls" (first token) or "mean" (masked mean)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        return masked_mean(hidden, attention_mask.bool())
    raise ValueError(f"unknown text pooling {how!r} (cls, mean, pooler)")


def encode_text(encoder: nn.Module, batch: dict, how: str = "cls") -> torch.Tensor:
    """Run a transformers text encoder on input_ids/attention_mask and pool -> [B,H]."""
    out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if how == "pooler":
        if out.pooler_output is None:
            raise ValueError("text pooling 'pooler' but the encoder has no pooler")
        return out.pooler_output
    return text_pool(out.last_hidden_state, batch["attention_mask"], how)


def drop_unused_pooler(encoder: nn.Module, how: str) -> None:
    """Remove the encoder's pooler when it is not used (no untrained, gradient-less weights)."""
    if how != "pooler" and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


def mlp(sizes: list[int], dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers with activation + dropout between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [act(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)
