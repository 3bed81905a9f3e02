"""One trainer for every architecture.

- device auto: CUDA when present (bf16 autocast), else CPU in fp32;
- optimizers from the model's parameter groups (``train.param_groups``: learning rate, weight
  decay, freezing per module; each group logged), schedule named by the preset's ``train`` section;
- seeded and reproducible: data order and dropout depend only on (seed, epoch), so a run resumed
  from its last checkpoint ends with the same weights as an uninterrupted one;
- model selection and early stopping on validation UA, or WA / weighted F1 (``select_on``; the
  validation part comes from the training groups, never from the test fold: see
  ``emoflow.evaluation.folds``);
- batches of similar length, or whole dialogues in utterance order for dialogue-context models
  (``batch_by: dialogue``, in training and in `predict`);
- optional class-weighted loss (``class_weights``), computed from the training part only;
- multi-label training (``task: multilabel``, set from the corpus protocol by the train step): the
  head's logits are independent per emotion (sigmoid), the loss is BCE-with-logits on the multi-hot
  targets (``pos_weight: balanced``: N/P per emotion from the training part), and selection is on
  the mean over emotions of the binary weighted accuracy (Makhmudov et al. 2024, Eq. 6) on the
  validation part;
- a checkpoint every epoch to the artifact store.
"""

from __future__ import annotations

import io
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from emoflow import work
from emoflow.models.base import EmotionModel, build_optimizers
from emoflow.training.data import (
    MULTILABEL, TASKS, DialogueBatchSampler, UtteranceDataset, make_batch_sampler, make_collate,
)
from emoflow.training.multilabel import mean_presence_wa, model_task, presence_pos_weight

log = logging.getLogger("emoflow.training")


@dataclass
class TrainConfig:
    epochs: int = 10
    # epochs over which training progress runs 0 -> 1 (the model's schedules, e.g. A4's modality
    # masking, and the cosine LR); default: epochs. The final refit, shorter than the folds' runs,
    # keeps the folds' value so its schedule at epoch e is the one the folds had at epoch e.
    schedule_epochs: int | None = None
    batch_size: int = 16
    # optimizer, lr, weight_decay, momentum, param_groups: read by the model (param_groups)
    grad_clip: float | None = 5.0
    scheduler: str = "constant"      # constant | step | cosine | halve_after
    scheduler_args: dict = field(default_factory=dict)
    patience: int | None = None      # early stopping on validation UA, in epochs
    seed: int = 0
    specaugment: str | None = None   # None | conservative | aggressive (log-mel models)
    chunk_frames: list[int] | None = None  # random T-frame chunks in training (ResNet paper)
    eval_batch_size: int = 32
    batch_by: str = "utterance"      # utterance (length buckets) | dialogue (whole dialogues, in order)
    class_weights: Any = None        # None | inverse_frequency | inverse_sqrt_frequency | [w per class]
    select_on: str = "ua"            # validation metric for model selection: ua | wa | wf1 (ml_wa: multilabel)
    task: str = "single_label"       # single_label (softmax, cross-entropy) | multilabel (sigmoid, BCE)
    pos_weight: Any = None           # multilabel: None | balanced (N/P per emotion, training part) | [w]

    @classmethod
    def from_preset(cls, preset: dict, **overrides: Any) -> "TrainConfig":
        """The preset's ``train`` section; keys the trainer does not know (e.g. ``param_groups``,
        read by ``EmotionModel.param_groups``) belong to the model. ``scheduler`` may be a name or ``{name: ..., <args>}``."""
        known = set(cls.__dataclass_fields__)
        section = dict(preset.get("train") or {})
        sched = section.get("scheduler")
        if isinstance(sched, dict):
            sched = dict(sched)
            section["scheduler"] = sched.pop("name", "constant")
            section["scheduler_args"] = {**sched, **section.get("scheduler_args", {})}
        cfg = cls(**{k: v for k, v in section.items() if k in known})
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg


CLASS_WEIGHTS = ("inverse_frequency", "inverse_sqrt_frequency")
SELECT_ON = ("ua", "wa", "wf1")
ML_SELECT_ON = "ml_wa"  # mean over emotions of Eq. 6 (binary weighted accuracy), multi-label runs


def selection_metric(cfg: TrainConfig) -> str:
    """The validation metric that selects the epoch: ``select_on``; a multi-label run selects on
    the mean Eq. 6 WA over emotions (``ml_wa``), a single-label metric there is an error."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r} ({', '.join(TASKS)})")
    if cfg.task == MULTILABEL:
        if cfg.select_on not in ("ua", ML_SELECT_ON):  # "ua": the default, not a choice
            raise ValueError(f"select_on {cfg.select_on!r} scores one label; a multilabel run selects on "
                             f"{ML_SELECT_ON!r} (mean Eq. 6 WA over emotions)")
        return ML_SELECT_ON
    if cfg.select_on not in SELECT_ON:
        raise ValueError(f"unknown select_on {cfg.select_on!r} ({', '.join(SELECT_ON)})")
    return cfg.select_on


def class_weights(labels: Sequence[int], num_classes: int, how: Any) -> torch.Tensor | None:
    """Loss weight per class from the TRAINING labels: ``(N / n_k) ** p`` (p = 1 for
    inverse_frequency, 0.5 for inverse_sqrt_frequency), scaled to mean 1 over the classes present
    (an absent class gets 1; it never occurs as a target); a list is taken as given; None: None."""
    if how is None or how is False or how == "none":
        return None
    if isinstance(how, (list, tuple)):
        if len(how) != num_classes:
            raise ValueError(f"class_weights lists {len(how)} weights for {num_classes} classes")
        return torch.tensor([float(w) for w in how], dtype=torch.float32)
    if how not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class_weights {how!r} ({', '.join(CLASS_WEIGHTS)}, or a list)")
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=num_classes)[:num_classes]
    present = counts > 0
    if not present.any():
        raise ValueError("class_weights: no training labels")
    power = 1.0 if how == "inverse_frequency" else 0.5
    w = np.ones(num_classes, dtype=np.float64)
    w[present] = (counts.sum() / counts[present]) ** power
    w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 per true class, averaged with the class frequencies as weights (scikit-learn "weighted")."""
    score, n = 0.0, len(y_true)
    for c in np.unique(y_true):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        score += f1 * np.sum(y_true == c) / n
    return float(score)


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def make_optimizers(model: EmotionModel, cfg: TrainConfig | None = None, name: str = "train") -> list[torch.optim.Optimizer]:
    """The optimizers of a fit, built in this one place from the model's parameter groups
    (``EmotionModel.param_groups``: the preset's ``train.param_groups``), one optimizer per type
    (e.g. SGD speech + Adam text); every group is logged."""
    groups = model.param_groups()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    for g in groups:
        log.info("%s: param group %s: %s parameters, %s lr %.3g weight_decay %.3g%s", name, g["name"],
                 f"{sum(p.numel() for p in g['params']):,}", g["optimizer"], g["lr"], g["weight_decay"],
                 f" momentum {g['momentum']:.3g}" if "momentum" in g else "")
    if frozen:
        log.info("%s: %s frozen parameters (in no group)", name, f"{frozen:,}")
    return build_optimizers(model, groups)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    name = (cfg.scheduler or "constant").lower()
    args = cfg.scheduler_args or {}
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.get("step_size", 10), gamma=args.get("gamma", 0.5))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.schedule_epochs or cfg.epochs))
    if name == "halve_after":
        # A2 (Padi et al.): constant for `constant_epochs`, then halved every `every` epochs
        hold, every = args.get("constant_epochs", 8), args.get("every", 2)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: 1.0 if e < hold else 0.5 ** ((e - hold) // every + 1)
        )
    raise ValueError(f"unknown scheduler {cfg.scheduler!r} (constant, step, cosine, halve_after)")


class Checkpointer:
    """Epoch checkpoints in the artifact store (loaded with ``weights_only=True``)."""

    def __init__(self, store, key: str):
        self.store = store
        self.key = key

    def save(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.store.put_bytes(self.key, buf.getvalue())

    def load(self) -> dict | None:
        if not self.store.exists(self.key):
            return None
        return torch.load(io.BytesIO(self.store.get_bytes(self.key)), map_location="cpu", weights_only=True)


def _augmenters(cfg: TrainConfig, epoch: int):
    """SpecAugment and random T-frame chunks for one epoch, seeded by (seed, epoch)."""
    if not cfg.specaugment and not cfg.chunk_frames:
        return None, None
    from emoflow.audio.specaugment import ChunkSampler, SpecAugment

    seed = cfg.seed * 1000 + epoch
    spec = SpecAugment(cfg.specaugment, seed=seed) if cfg.specaugment else None
    chunks = None
    if cfg.chunk_frames:
        sampler = ChunkSampler(cfg.chunk_frames, seed=seed + 1)
        chunks = lambda mels: sampler([torch.from_numpy(np.ascontiguousarray(m)) for m in mels])  # noqa: E731
    return spec, chunks


def max_wave_samples(preset: dict) -> int | None:
    """Samples kept of each training waveform: ``features.wave.max_seconds`` x ``sample_rate``
    (default 16 kHz); None when the preset sets no limit."""
    wave = (preset.get("features") or {}).get("wave") or {}
    if wave.get("max_seconds") is None:
        return None
    seconds = float(wave["max_seconds"])
    if seconds <= 0:
        raise ValueError(f"features.wave.max_seconds must be > 0, got {wave['max_seconds']!r}")
    return int(round(seconds * int(wave.get("sample_rate", 16000))))


def cap_wave(batch: dict, n: int) -> dict:
    """The batch with each waveform cut to its first ``n`` samples (training only; evaluation and
    prediction see whole clips)."""
    if batch["wave"].shape[1] <= n:
        return batch
    return {**batch, "wave": batch["wave"][:, :n], "wave_mask": batch["wave_mask"][:, :n]}


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    dataset: UtteranceDataset,
    *,
    device: torch.device | None = None,
    mode: str = "both",
    batch_size: int = 32,
    with_branches: bool = False,
    batch_by: str | None = None,
) -> dict:
    """Class probabilities (and per-branch log-probabilities when asked) in dataset order.

    A multi-label model (`model_task`) gives per-emotion probabilities (sigmoid, independent);
    ``targets`` (multi-hot truth) come back when the dataset has them.

    ``batch_by`` (default: the model preset's ``train.batch_by``, else "utterance"): "utterance"
    batches consecutive items; "dialogue" batches whole dialogues in order (what a dialogue-context
    model was trained on); the results come back in dataset order either way."""
    device = device or next(model.parameters()).device
    model.eval()
    tokenize = getattr(model, "tokenize", None) if "text" in model.inputs else None
    if batch_by is None:
        batch_by = ((getattr(model, "preset", None) or {}).get("train") or {}).get("batch_by", "utterance")
    if batch_by == "dialogue":
        sampler = DialogueBatchSampler([it.dialogue for it in dataset.items], batch_size, shuffle=False)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=make_collate(tokenize))
    elif batch_by == "utterance":
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=make_collate(tokenize))
    else:
        raise ValueError(f"unknown batch_by {batch_by!r} (utterance, dialogue)")
    ids, probs, labels, branches = [], [], [], {"audio_logits": [], "text_logits": []}
    targets = []
    squash = torch.sigmoid if model_task(model) == MULTILABEL else (lambda x: torch.softmax(x, dim=-1))
    for batch in loader:
        out = model(_to_device(batch, device), mode=mode)
        probs.append(squash(out["logits"].float()).cpu().numpy())
        ids += batch["ids"]
        labels.append(batch["labels"].numpy())
        if "targets" in batch:
            targets.append(batch["targets"].numpy())
        if with_branches:
            for key in branches:
                if out.get(key) is not None:
                    branches[key].append(torch.log_softmax(out[key].float(), -1).cpu().numpy())
    result = {"ids": ids, "probs": np.concatenate(probs), "labels": np.concatenate(labels)}
    if targets:
        result["targets"] = np.concatenate(targets)
    if with_branches:
        result.update({k: np.concatenate(v) for k, v in branches.items() if v})
    if batch_by == "dialogue":  # back to dataset order
        position = {it.id: i for i, it in enumerate(dataset.items)}
        order = np.argsort([position[i] for i in ids], kind="stable")
        result = {k: ([v[i] for i in order] if k == "ids" else v[order]) for k, v in result.items()}
    return result


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else 0.0


@dataclass
class FitResult:
    best_epoch: int
    best_val_ua: float | None
    epochs_run: int
    history: list[dict]
    stopped_early: bool
    seconds: float


def fit(
    model: EmotionModel,
    train: UtteranceDataset,
    val: UtteranceDataset | None,
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    checkpointer: Checkpointer | None = None,
    after_epoch: Callable[[int], None] | None = None,
    progress: bool = True,
    name: str = "train",
) -> FitResult:
    """Train `model` in place; with a validation set, keep the best epoch by validation UA (or the
    preset's ``select_on`` metric)."""
    from tqdm import tqdm

    if not isinstance(model, EmotionModel):
        raise TypeError(f"{name}: fit trains an EmotionModel (emoflow.models.base), got {type(model).__name__}")

    device = device or pick_device()
    model.to(device)
    seed_everything(cfg.seed)
    optimizers = make_optimizers(model, cfg, name)
    schedulers = [make_scheduler(opt, cfg) for opt in optimizers]
    start_epoch, best_ua, best_epoch, best_state, history, bad_epochs = 0, -1.0, 0, None, [], 0
    # frozen parameters never change in fit: snapshots and checkpoints leave them out (a frozen
    # MiniLM would otherwise be written twice per epoch); the model being fitted keeps them
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    def snapshot() -> dict:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}

    def restore(weights: dict) -> None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if set(missing) - frozen or unexpected:
            raise RuntimeError(f"{name}: checkpoint does not match the model: missing "
                               f"{sorted(set(missing) - frozen)[:5]}, unexpected {sorted(unexpected)[:5]}")

    state = checkpointer.load() if checkpointer else None
    if state is not None:
        restore(state["model"])
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        for sched, sched_state in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(sched_state)
        start_epoch, best_ua, best_epoch = state["epoch"] + 1, state["best_ua"], state["best_epoch"]
        best_state, history, bad_epochs = state["best_model"], state["history"], state["bad_epochs"]
        log.info("%s: resumed from checkpoint after epoch %d", name, state["epoch"] + 1)
        if state.get("done"):
            start_epoch = cfg.epochs
    tokenize = model.tokenize if "text" in model.inputs else None
    sampler = make_batch_sampler(train.items, cfg.batch_size, batch_by=cfg.batch_by, shuffle=True, seed=cfg.seed)
    steps_per_epoch = max(1, len(sampler))
    schedule_epochs = max(1, cfg.schedule_epochs or cfg.epochs)
    wave_limit = max_wave_samples(model.preset)
    use_bf16 = device.type == "cuda"
    select_on = selection_metric(cfg)
    multilabel = cfg.task == MULTILABEL
    if multilabel != (model_task(model) == MULTILABEL):
        raise ValueError(f"{name}: training config task {cfg.task!r} but the model's preset says {model_task(model)!r}")
    if multilabel and cfg.class_weights not in (None, False, "none"):
        raise ValueError(f"{name}: class_weights weigh one label per utterance; a multilabel run takes pos_weight")
    if multilabel and type(model).compute_loss is not EmotionModel.compute_loss:
        raise ValueError(f"{name}: architecture {model.arch} has its own single-label loss "
                         f"({type(model).__name__}.compute_loss); multilabel training needs the base loss (BCE)")
    weight = class_weights([it.label for it in train.items], model.num_classes, cfg.class_weights)
    pos_weight = presence_pos_weight(np.stack([it.target for it in train.items]), cfg.pos_weight) if multilabel else None
    if pos_weight is not None:
        pos_weight = pos_weight.to(device)
        log.info("%s: BCE pos_weight %s", name, [round(float(w), 3) for w in pos_weight])
    if weight is not None:
        weight = weight.to(device)
        log.info("%s: class weights %s", name, [round(float(w), 3) for w in weight])
    started = time.time()
    stopped_early = bool(state and state.get("done") and state.get("stopped_early"))
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        sampler.set_epoch(epoch)
        spec, chunks = _augmenters(cfg, epoch)
        loader = DataLoader(train, batch_sampler=sampler, collate_fn=make_collate(tokenize, batch_logmel=chunks))
        model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            model.set_progress(min(1.0, (epoch + step / steps_per_epoch) / schedule_epochs))
            if wave_limit is not None and "wave" in batch:
                batch = cap_wave(batch, wave_limit)
            if spec is not None and "logmel" in batch:
                batch = spec.augment_batch(batch)
            batch = _to_device(batch, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = model(batch, mode="both")
            loss = (model.compute_loss(out, batch["targets"], class_weight=pos_weight) if multilabel
                    else model.compute_loss(out, batch["labels"], class_weight=weight))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss is {loss.item()} at epoch {epoch + 1} step {step}")
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for opt in optimizers:
                opt.step()
            total += float(loss.detach()) * len(batch["ids"])
            count += len(batch["ids"])
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
        for sched in schedulers:
            sched.step()
        record = {"epoch": epoch + 1, "loss": total / max(count, 1), "lr": optimizers[0].param_groups[0]["lr"]}
        if val is not None and len(val):
            pred = predict(model, val, device=device, batch_size=cfg.eval_batch_size, batch_by=cfg.batch_by)
            y_pred = pred["probs"].argmax(1)
            record["val_ua"] = unweighted_accuracy(pred["labels"], y_pred)
            if select_on in ("wa", "wf1"):
                record["val_wa"] = float(np.mean(pred["labels"] == y_pred))
                record["val_wf1"] = weighted_f1(pred["labels"], y_pred)
            if multilabel:
                record["val_ml_wa"] = mean_presence_wa(pred["targets"], pred["probs"], model.labels)
            # best_ua holds the best score of the selection metric (the checkpoint key keeps its name)
            if record[f"val_{select_on}"] > best_ua:
                best_ua, best_epoch, bad_epochs = record[f"val_{select_on}"], epoch + 1, 0
                best_state = snapshot()
            else:
                bad_epochs += 1
        else:
            best_epoch = epoch + 1
        history.append(record)
        work.add("epochs")
        log.info(
            "%s epoch %d/%d loss %.4f%s",
            name, epoch + 1, cfg.epochs, record["loss"],
            (f" val UA {record['val_ua'] * 100:.1f}" if "val_ua" in record else "")
            + (f" WF1 {record['val_wf1'] * 100:.1f}" if "val_wf1" in record else "")
            + (f" Eq.6 WA {record['val_ml_wa'] * 100:.1f}" if "val_ml_wa" in record else ""),
        )
        done = epoch + 1 == cfg.epochs or bool(cfg.patience and bad_epochs >= cfg.patience)
        stopped_early = done and epoch + 1 < cfg.epochs
        if checkpointer:
            checkpointer.save({
                "model": snapshot(), "optimizers": [o.state_dict() for o in optimizers],
                "schedulers": [sc.state_dict() for sc in schedulers], "epoch": epoch, "best_ua": best_ua,
                "best_epoch": best_epoch, "best_model": best_state, "history": history,
                "bad_epochs": bad_epochs, "done": done, "stopped_early": stopped_early,
            })
        if after_epoch:
            after_epoch(epoch + 1)
        if done:
            break
    if best_state is not None:
        restore(best_state)
    return FitResult(
        best_epoch=best_epoch,
        # validation UA at the selected epoch (whatever metric selected it)
        best_val_ua=next((r["val_ua"] for r in history if r["epoch"] == best_epoch and "val_ua" in r), None),
        epochs_run=len(history),
        history=history,
        stopped_early=stopped_early,
        seconds=time.time() - started,
    )


def final_epochs(best_epochs: Sequence[int]) -> int:
    """Epochs for the final fit on all groups: the median of the folds' best epochs."""
    return max(1, int(math.ceil(statistics.median(best_epochs)))) if best_epochs else 1
