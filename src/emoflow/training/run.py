"""The train step: cross-validated training of one architecture, then the final fit on all groups.

For each fold (from ``emoflow.evaluation.folds``): a fresh model is trained on the fold's training
groups, selected on its validation part (carved from the training groups), and scored on the test
groups. The final model is then trained on every group for the median of the folds' best epochs;
that model is what gets registered. Outputs, in ``out_dir``:

- ``model/``: the final model (``emoflow.models.save_model``);
- ``predictions.json``: per-fold test predictions (ids, y_true, y_pred, probabilities), labels,
  best epochs and the training configuration, read by the evaluate step. A multi-label run
  (``task: multilabel``) adds per fold ``true_sets`` / ``pred_sets`` (the emotions present / predicted
  present, probability > 0.5) and its ``probs`` are per-emotion (sigmoid); ``y_true`` / ``y_pred``
  stay the dominant emotion and the most probable one.

The task comes from the utterances' corpus protocol (`emoflow.training.data.training_task`) and is
written into the preset's ``train.task``, so the saved model carries it (a preset that says
otherwise is an error).

Seed ensembles (preset ``train.ensemble: N``): in each fold, member k trains with seed
``seed + k`` and is selected on its own validation part (``make_folds(val_rotation=k)``: another
held-out share of the training groups, never the test groups); the fold's test predictions are the
members' mean probabilities. The final fit trains N members on every group and saves them as one
``SeedEnsemble``.

Fanned out per fold (the pipeline's ``fan_out_folds``): ``run_training(only_fold=f, skip_final=True)``
once per fold, then `finalize_training` merges the folds' summaries (`merge_fold_predictions`) and
does the same final fit, giving the same outputs.

Reuse across runs (``results``, a ``emoflow.storage.results.ResultCache``): each fold's result and
each final fit is an entry keyed by the run key (every manifest row, the resolved preset, the
training config, the labels), the fold's train/validation/test ids of every ensemble member, the
torch version, the architecture folder's source and the code version; the final fit's key adds its epoch count and the folds'
fusion fits. A hit restores the stored result (and the final model's files) without loading the
data or building a model: an identical rerun trains no epoch, on kfp.local and on a cluster alike,
and the one-task train and the per-fold fan-out share their entries.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from emoflow import work
from emoflow.config import config_hash
from emoflow.corpora import Utterance
from emoflow.storage.results import ResultCache, jsonable, source_digest
from emoflow.training.data import MULTILABEL, SINGLE_LABEL, load_items, presence_sets, training_task
from emoflow.training.trainer import (
    Checkpointer, TrainConfig, final_epochs, fit, pick_device, predict, seed_everything, unweighted_accuracy,
)

log = logging.getLogger("emoflow.training")


def resolve_preset(arch: str, preset: str | dict) -> dict:
    from emoflow.models import load_preset

    if isinstance(preset, dict):
        return preset
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.exists():
        from emoflow.config import load_yaml

        return load_yaml(path)
    return load_preset(arch, preset)


def with_task(preset: dict, utterances: Sequence[Utterance]) -> dict:
    """The preset with ``train.task`` set to what the utterances' corpus protocol asks for; a preset
    naming another task, or a multi-label seed ensemble (it averages softmax outputs), is an error."""
    task = training_task(utterances)
    train = dict(preset.get("train") or {})
    given = train.get("task")
    if given is not None and given != task:
        raise ValueError(f"preset {preset.get('name')!r} says train.task {given!r} but the data's corpus protocol "
                         f"is {task}" + (f" (utterance {utterances[0].id!r})" if utterances else ""))
    if task == MULTILABEL and int(train.get("ensemble", 1)) > 1:
        raise ValueError("seed ensembles average softmax probabilities: not available for a multilabel run")
    if task == SINGLE_LABEL:
        return preset
    return {**preset, "train": {**train, "task": task}}


def labels_of(utterances: Sequence[Utterance], preset: dict) -> list[str]:
    given = preset.get("labels")
    present = {u.label for u in utterances if u.label is not None}
    if (preset.get("train") or {}).get("task") == MULTILABEL:  # every emotion present somewhere
        present |= {e for u in utterances for e in u.extra.get("emotion_presence") or ()}
    present = sorted(present)
    if given:
        unknown = sorted(set(present) - set(given))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the preset's label list {given}")
        return list(given)
    return present


def _fusion_calibration(model, val, device) -> dict | None:
    """Late-fusion models (A2) fit their fusion weight on held-out TRAINING data only."""
    if not model.late_fusion or val is None or not len(val):
        return None
    pred = predict(model, val, device=device, with_branches=True)
    if "audio_logits" not in pred or "text_logits" not in pred:
        return None
    return model.fit_fusion(pred["audio_logits"], pred["text_logits"], pred["labels"])


def average_fusion(fits: list[dict]) -> dict:
    """Mean fusion weight and z-norm statistics over the folds' late-fusion fits."""
    return {
        "w1": float(np.mean([f["w1"] for f in fits])),
        "znorm": {k: np.mean([f["znorm"][k] for f in fits], axis=0).tolist() for k in fits[0]["znorm"]},
        "folds": len(fits),
    }


def fold_plan(utterances: Sequence[Utterance], fold_scheme: str, n_folds: int | None, seed: int,
              val_rotation: int = 0, validation: str = "one_group", validation_share: float = 0.1):
    """The run's folds (utterances de-duplicated by id, last record wins): one plan for the
    training, the fan-out and the final merge. `validation` / `validation_share`: how each fold's
    validation part is carved from its training groups (``emoflow.evaluation.folds.VAL_MODES``)."""
    from emoflow.evaluation.folds import make_folds

    by_id = {u.id: u for u in utterances}
    return make_folds(list(by_id.values()), scheme=fold_scheme, n_folds=n_folds, seed=seed,
                      val=validation, val_share=validation_share, val_rotation=val_rotation)


class _LazyData:
    """What the architecture's inputs need, for every utterance (a probe model names the inputs),
    loaded on the first call only: a run whose folds and final fit are all reused never loads it."""

    def __init__(self, utterances: Sequence[Utterance], store, arch: str, preset: dict, labels: list[str],
                 seed: int, progress: bool):
        self.args = (utterances, store, arch, preset, labels, seed, progress)
        self.data = None

    def __call__(self):
        if self.data is None:
            from emoflow.models import build_model

            utterances, store, arch, preset, labels, seed, progress = self.args
            seed_everything(seed)
            probe = build_model(arch, preset, labels)
            task = (preset.get("train") or {}).get("task", SINGLE_LABEL)
            self.data = load_items(utterances, store, labels, set(probe.inputs), progress=progress, task=task)
        return self.data


def run_training(
    utterances: Sequence[Utterance],
    store,
    arch: str,
    preset: str | dict,
    out_dir: str | Path,
    *,
    fold_scheme: str = "logo",
    n_folds: int | None = None,
    validation: str = "one_group",
    validation_share: float = 0.1,
    only_fold: str | None = None,
    skip_final: bool = False,
    final_epoch_count: int | None = None,
    seed: int = 0,
    epochs: int | None = None,
    device: str = "auto",
    checkpoint_prefix: str | None = None,
    progress: bool = True,
    results: ResultCache | None = None,
) -> dict:
    """Cross-validated training + final fit. Returns the summary also written to predictions.json.

    With `results`, folds and the final fit found there are reused instead of trained."""
    from emoflow.models import SeedEnsemble, build_model, ensemble_size

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preset = with_task(resolve_preset(arch, preset), utterances)
    labels = labels_of(utterances, preset)
    cfg = TrainConfig.from_preset(preset, epochs=epochs, seed=seed)
    dev = pick_device(device)
    data = _LazyData(utterances, store, arch, preset, labels, seed, progress)
    run_key = _run_key(arch, preset, cfg, labels, utterances)
    validated = dict(validation=validation, validation_share=validation_share)
    folds = fold_plan(utterances, fold_scheme, n_folds, seed, **validated)
    if only_fold is not None:
        folds = [f for f in folds if f.name == only_fold]
        if not folds:
            raise ValueError(f"no fold named {only_fold!r}")

    checkpointer = RunCheckpoints(store, checkpoint_prefix, arch, run_key)

    n_members = ensemble_size(preset)
    # member k of a seed ensemble is selected on another held-out part of the training groups
    rotated = [{f.name: f for f in fold_plan(utterances, fold_scheme, n_folds, seed, val_rotation=k, **validated)}
               for k in range(1, n_members)]
    done: dict = {}
    for fold in folds:
        parts = [fold] + [r[fold.name] for r in rotated]
        key = results.key("fold", _fold_inputs(arch, run_key, parts)) if results else None
        reused = results.lookup(key) if results else None
        if reused is not None:
            log.info("%s %s: reused the fold's result (cache key %s)", arch, fold.name, key)
            work.reused("folds")
            done[fold.name] = reused
            continue
        test = data().subset(fold.test_ids)
        members, fits, fusion, val_groups = [], [], [], []
        for k, part in enumerate(parts):
            if sorted(part.test_ids) != sorted(fold.test_ids):
                raise RuntimeError(f"{fold.name}: member {k} has another test part")
            train, val = data().subset(part.train_ids), data().subset(part.val_ids)
            val_groups.append(list(part.val_groups))
            log.info("%s %s member %d: train %d, val %d (%s), test %d", arch, fold.name, k, len(train), len(val),
                     ", ".join(part.val_groups), len(test))
            name = fold.name if k == 0 else f"{fold.name}-m{k}"
            seed_everything(seed + k)
            model = build_model(arch, preset, labels)
            fits.append(fit(model, train, val, TrainConfig.from_preset(preset, epochs=epochs, seed=seed + k),
                            device=dev, checkpointer=checkpointer(name), progress=progress, name=f"{arch} {name}"))
            fusion.append(_fusion_calibration(model, val, dev))
            members.append(model)
        model = members[0] if n_members == 1 else SeedEnsemble(members)
        pred = predict(model, test, device=dev)
        y_pred = pred["probs"].argmax(1)
        best_epochs = [r.best_epoch for r in fits]
        result = {
            "ids": pred["ids"],
            "y_true": [labels[i] for i in pred["labels"]],
            "y_pred": [labels[i] for i in y_pred],
            "probs": np.round(pred["probs"], 6).tolist(),
            # an ensemble's final members train for the median of every member's best epoch
            "best_epoch": int(np.median(best_epochs)) if n_members > 1 else best_epochs[0],
            # members are selected on different parts (each one's own validation UA, averaged)
            "best_val_ua": fits[0].best_val_ua if n_members == 1 else _mean_or_none([r.best_val_ua for r in fits]),
            "history": fits[0].history if n_members == 1 else [r.history for r in fits],
            "test_groups": list(fold.test_groups),
            "val_groups": list(fold.val_groups),
            "val_unit": fold.val_unit,
            "n_train": len(fold.train_ids),
            "n_val": len(fold.val_ids),
            **({"member_val_groups": val_groups} if n_members > 1 else {}),
            **({"true_sets": presence_sets(pred["targets"], labels), "pred_sets": presence_sets(pred["probs"], labels)}
               if cfg.task == MULTILABEL else {}),
            "fusion": fusion[0] if n_members == 1 else (fusion if any(fusion) else None),
        }
        if n_members > 1:
            result["member_best_epochs"] = best_epochs
        ua = unweighted_accuracy(pred["labels"], y_pred)
        log.info("%s %s: test UA %.1f (best epoch %s%s)", arch, fold.name, ua * 100, best_epochs[0] if n_members == 1
                 else best_epochs, "" if n_members == 1 else f", ensemble of {n_members}")
        # as a reused result comes back: the final fit's key and predictions.json do not depend on which
        done[fold.name] = jsonable(result)
        if results:
            results.save(key, done[fold.name])

    summary = {
        "arch": arch,
        "preset": preset,
        "labels": labels,
        "train_config": cfg.__dict__,
        "task": cfg.task,
        "fold_scheme": fold_scheme,
        "validation": {"mode": validation, "share": validation_share},
        # speaker-normalised features use test speakers' unlabelled statistics: its own protocol
        "protocol": "speaker-normalised" if any(u.extra.get("speaker_norm") for u in utterances) else "strict",
        "folds": done,
        "run_key": run_key,
        "device": str(dev),
    }
    if not skip_final:
        _final_fit(summary, data, arch, preset, labels, out_dir, seed=seed, dev=dev,
                   final_epoch_count=final_epoch_count, checkpointer=checkpointer, progress=progress,
                   results=results, fold_epochs=cfg.epochs)
    (out_dir / "predictions.json").write_text(json.dumps(summary, indent=1, default=float))
    # done: the checkpoints only served a retry; a fold task drops its own fold's files only
    # (other folds of the run may still be training)
    checkpointer.drop([f"{f.name}{'' if k == 0 else f'-m{k}'}" for f in folds for k in range(n_members)]
                      if only_fold is not None else None)
    return summary


def _final_fit(summary: dict, data: "_LazyData", arch: str, preset: dict, labels: list[str], out_dir: Path, *,
               seed: int, dev, final_epoch_count: int | None, checkpointer, progress: bool,
               results: ResultCache | None, fold_epochs: int) -> None:
    """Fit on every group for the median of the folds' best epochs (training-progress schedules
    as in the folds' ``fold_epochs``-epoch runs); save to out_dir/model."""
    from emoflow.models import SeedEnsemble, build_model, ensemble_size, save_model

    folds = summary["folds"]
    n_final = final_epoch_count or final_epochs([r["best_epoch"] for r in folds.values()])
    n_members = ensemble_size(preset)
    key = results.key("final", {"run": summary["run_key"], "epochs": n_final, "code": _code(arch),
                                "fusion": [r.get("fusion") for r in folds.values()]}) if results else None
    reused = results.lookup(key, out_dir / "model") if results else None
    if reused is not None:
        log.info("%s final fit: reused the model (cache key %s)", arch, key)
        work.reused("final_fits")
        summary.update(reused)
        return
    final_cfg = TrainConfig.from_preset(preset, epochs=n_final, seed=seed, patience=None, schedule_epochs=fold_epochs)
    members, fused = [], []
    for k in range(n_members):
        seed_everything(seed + k)
        model = build_model(arch, preset, labels)
        final_cfg.seed = seed + k
        # the epoch count is part of the checkpoint name: a resumed final fit never mixes two lengths
        name = f"final-e{n_final}" + (f"-m{k}" if k else "")
        fit(model, data(), None, final_cfg, device=dev, checkpointer=checkpointer(name),
            progress=progress, name=f"{arch} {name}")
        # the final fit has no held-out part: use the folds' fusion fits (each on its own validation part)
        fusion = [_member(r["fusion"], k) for r in folds.values() if r.get("fusion")]
        fusion = [f for f in fusion if f]
        if fusion and model.late_fusion:
            fused.append(average_fusion(fusion))
            model.set_fusion(fused[-1])
        members.append(model.cpu())
    final = {"final_fusion": jsonable(fused[0] if n_members == 1 else fused)} if fused else {}
    final["final_epochs"] = n_final
    save_model(members[0] if n_members == 1 else SeedEnsemble(members), out_dir / "model")
    summary.update(final)
    if results:
        results.save(key, final, out_dir / "model")


def _member(fusion, k: int):
    """Member k's fusion fit: a fold stores one dict (single model) or one per ensemble member."""
    return fusion[k] if isinstance(fusion, list) else fusion


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def merge_fold_predictions(parts: Sequence[dict], expected_folds: Sequence[str] | None = None) -> dict:
    """Merge per-fold training summaries (``run_training(only_fold=..., skip_final=True)``) into one.

    Every part must come from the same run (same ``run_key``: data, preset, training config and
    labels); a fold may appear once only, and with `expected_folds` every planned fold must be
    there. Folds come out in `expected_folds` order (else in the order given)."""
    if not parts:
        raise ValueError("no fold predictions to merge")
    first = parts[0]
    merged = {k: v for k, v in first.items() if k not in ("folds", "final_epochs", "final_fusion")}
    merged["folds"] = {}
    for i, part in enumerate(parts):
        for key in ("run_key", "arch", "fold_scheme", "validation", "labels"):
            if part.get(key) != first.get(key):
                raise ValueError(f"fold predictions part {i} has {key}={part.get(key)!r}, "
                                 f"part 0 has {first.get(key)!r}: they are not from the same run")
        for name, result in part["folds"].items():
            if name in merged["folds"]:
                raise ValueError(f"fold {name!r} appears in more than one fold predictions part")
            merged["folds"][name] = result
    if expected_folds is not None:
        missing = [f for f in expected_folds if f not in merged["folds"]]
        extra = sorted(set(merged["folds"]) - set(expected_folds))
        if missing or extra:
            raise ValueError(f"fold predictions do not match the fold plan: missing {missing}, unexpected {extra}")
        merged["folds"] = {f: merged["folds"][f] for f in expected_folds}
    return merged


def finalize_training(
    utterances: Sequence[Utterance],
    store,
    arch: str,
    preset: str | dict,
    out_dir: str | Path,
    parts: Sequence[dict],
    *,
    fold_scheme: str = "logo",
    n_folds: int | None = None,
    validation: str = "one_group",
    validation_share: float = 0.1,
    seed: int = 0,
    epochs: int | None = None,
    device: str = "auto",
    checkpoint_prefix: str | None = None,
    progress: bool = True,
    results: ResultCache | None = None,
) -> dict:
    """The fan-out path's last step: merge the folds' predictions and do the final fit (reused
    from `results` when it is there).

    Gives the same ``model/`` and ``predictions.json`` as `run_training` without `only_fold`.
    The parts must match this run (same run key) and cover every fold of the plan."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preset = with_task(resolve_preset(arch, preset), utterances)
    labels = labels_of(utterances, preset)
    cfg = TrainConfig.from_preset(preset, epochs=epochs, seed=seed)
    run_key = _run_key(arch, preset, cfg, labels, utterances)
    plan = [f.name for f in fold_plan(utterances, fold_scheme, n_folds, seed, validation=validation,
                                      validation_share=validation_share)]
    summary = merge_fold_predictions(parts, expected_folds=plan)
    if summary["run_key"] != run_key:
        raise ValueError(f"fold predictions come from run {summary['run_key']}, not this one ({run_key}): "
                         "data, preset or training config differ")
    dev = pick_device(device)
    data = _LazyData(utterances, store, arch, preset, labels, seed, progress)

    checkpointer = RunCheckpoints(store, checkpoint_prefix, arch, run_key)

    summary["device"] = str(dev)
    _final_fit(summary, data, arch, preset, labels, out_dir, seed=seed, dev=dev,
               final_epoch_count=None, checkpointer=checkpointer, progress=progress, results=results,
               fold_epochs=cfg.epochs)
    (out_dir / "predictions.json").write_text(json.dumps(summary, indent=1, default=float))
    checkpointer.drop()
    return summary


class RunCheckpoints:
    """Checkpointers of one training run (``<prefix>/<arch>-<run key>/<name>.pt``); none without a prefix."""

    def __init__(self, store, prefix: str | None, arch: str, run_key: str):
        self.store = store
        self.base = f"{prefix.rstrip('/')}/{arch}-{run_key}/" if prefix else None

    def __call__(self, name: str) -> Checkpointer | None:
        return Checkpointer(self.store, f"{self.base}{name}.pt") if self.base else None

    def drop(self, names: Sequence[str] | None = None) -> None:
        """Delete the named checkpoints (all of the run's when None)."""
        if not self.base:
            return
        keys = [f"{self.base}{n}.pt" for n in names] if names is not None else self.store.list(self.base)
        for key in keys:
            self.store.delete(key, missing_ok=True)
        log.info("removed %d checkpoint(s) under %s", len(keys), self.base)


def _run_key(arch: str, preset: dict, cfg: TrainConfig, labels: list[str], utterances: Sequence[Utterance]) -> str:
    """Content key of a training run: checkpoints, fold parts and reused results only within one key.

    The data part is every manifest row (de-duplicated by id as in `fold_plan`): audio is
    content-addressed in it, and features and embeddings are keys of their content and config."""
    by_id = {u.id: u for u in utterances}
    return config_hash({
        "arch": arch, "preset": preset, "train": cfg.__dict__, "labels": labels,
        "data": sorted(u.to_json() for u in by_id.values()),
    })


def _fold_inputs(arch: str, run_key: str, parts) -> dict:
    """What a fold's result depends on beyond the run: each ensemble member's train/val/test ids."""
    return {"run": run_key, "code": _code(arch),
            "members": [{"fold": p.name, "train": sorted(p.train_ids), "val": sorted(p.val_ids),
                         "test": sorted(p.test_ids)} for p in parts]}


def _code(arch: str) -> dict:
    """Code a training result depends on besides emoflow's own (in every cache key): torch, and
    the architecture's folder (it may live outside the package: entry point, $EMOFLOW_ARCH_PATH)."""
    import torch

    from emoflow.models import arch_folder

    return {"torch": torch.__version__, "arch": source_digest(arch_folder(arch).folder.resolve())}
