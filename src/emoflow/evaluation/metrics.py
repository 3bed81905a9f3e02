"""Classification metrics as the speech-emotion papers name them (scikit-learn underneath).

- WA  (weighted accuracy)   = overall accuracy: correct / total; classes weigh by their size.
- UA  (unweighted accuracy) = balanced accuracy: mean of the per-class recalls over the classes
  present in the ground truth (a class without test samples has no recall and is left out).
- WF1 (weighted F1) = per-class F1 averaged with weights = class support.
- MF1 (macro F1)    = unweighted mean of per-class F1 over the classes that occur in the ground
  truth or in the predictions.

Multi-label (CMU-MOSEI: one binary task per emotion, :func:`multilabel_metrics`):

- binary WA (Makhmudov et al. 2024, Eq. 6, after Tong et al. 2017) = (TP × N/P + TN) / (2N),
  P = positives, N = negatives in the truth; equal to (TP/P + TN/N) / 2, the mean recall of the
  two classes (what that paper means by "identical to the mean recall");
- accuracy (Eq. 4) = (TP + TN) / (TP + TN + FP + FN); F1 (Eq. 5) = 2TP / (2TP + FP + FN).

All values are fractions in [0, 1]; reports show them as percentages.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

SCALAR_METRICS = ("ua", "wa", "wf1", "mf1")
# multi-label runs (`aggregate` with true_sets / pred_sets): means over emotions of Eq. 6, 4 and 5
MULTILABEL_METRICS = ("ml_wa", "ml_accuracy", "ml_f1")

GLOSSARY = {
    "wa": "WA — weighted accuracy = overall accuracy (correct / all); large classes weigh more.",
    "ua": "UA — unweighted accuracy = balanced accuracy = mean per-class recall (classes with test "
          "samples); every emotion weighs the same.",
    "wf1": "WF1 — weighted F1: per-class F1 averaged with weights proportional to class support.",
    "mf1": "MF1 — macro F1: unweighted mean of per-class F1 (classes present in truth or "
           "predictions).",
    "fold mean ± std": "metric computed on each fold's test part, then mean and population standard "
                       "deviation (ddof=0) over folds.",
    "ml_wa": "Eq. 6 WA — multi-label: per emotion the binary weighted accuracy (TP × N/P + TN) / 2N "
             "(= mean recall of present and absent), averaged over the emotions (Makhmudov et al. 2024).",
    "ml_accuracy": "Eq. 4 accuracy — multi-label: per emotion (TP + TN) / all, averaged over the emotions.",
    "ml_f1": "Eq. 5 F1 — multi-label: per emotion 2TP / (2TP + FP + FN), averaged over the emotions.",
    "pooled": "metric computed once on the predictions of all folds together (each utterance is "
              "tested in exactly one fold).",
    "confusion": "rows = true emotion, columns = predicted emotion; counts, and row-normalised "
                 "(each row divided by its total = per-class recall on the diagonal; empty rows "
                 "stay zero).",
}


def _indices(values: Sequence, labels: list, what: str) -> np.ndarray:
    """Map label values (or integer class indices, when the labels are not integers) to indices
    into ``labels``; anything else is an error naming the position."""
    index = {lab: i for i, lab in enumerate(labels)}
    ints_are_indices = not any(isinstance(lab, (int, np.integer)) for lab in labels)
    out = np.empty(len(values), dtype=np.int64)
    for pos, v in enumerate(values):
        if isinstance(v, np.generic):
            v = v.item()
        try:
            hit = index.get(v) if not isinstance(v, bool) else None
        except TypeError:  # unhashable
            hit = None
        if hit is None and ints_are_indices and isinstance(v, int) and not isinstance(v, bool) \
                and 0 <= v < len(labels):
            hit = v
        if hit is None:
            raise ValueError(f"{what}[{pos}] = {v!r} is not one of the labels {labels}")
        out[pos] = hit
    return out


def _check_labels(labels) -> list:
    labels = list(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        dup = sorted({str(x) for x in labels if labels.count(x) > 1})
        raise ValueError(f"duplicate labels {dup}")
    return labels


def _nan_to_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def compute_metrics(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict:
    """WA, UA, WF1, MF1, per-class precision/recall/F1/support and confusion matrices.

    ``y_true`` / ``y_pred`` hold label values from ``labels`` or integer indices into it.
    Per-class values that are undefined (no support, or never predicted) are ``None``.
    Returns a JSON-ready dict: wa, ua, wf1, mf1, n, labels, per_class {label: {precision,
    recall, f1, support}}, confusion (counts, rows = true), confusion_norm (row-normalised).
    """
    labels = _check_labels(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no predictions to score (empty y_true)")
    t = _indices(list(y_true), labels, "y_true")
    p = _indices(list(y_pred), labels, "y_pred")
    all_idx = list(range(len(labels)))
    seen = sorted(set(t.tolist()) | set(p.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes absent from y_true
        prec, rec, f1, support = precision_recall_fscore_support(
            t, p, labels=all_idx, zero_division=np.nan)
        result = {
            "wa": float(accuracy_score(t, p)),
            "ua": float(balanced_accuracy_score(t, p)),
            "wf1": float(f1_score(t, p, labels=all_idx, average="weighted", zero_division=0.0)),
            "mf1": float(f1_score(t, p, labels=seen, average="macro", zero_division=0.0)),
        }
    cm = confusion_matrix(t, p, labels=all_idx)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    per_class = {}
    for i, lab in enumerate(labels):
        # F1 of a class that was predicted or present but never right is 0, not undefined
        f = f1[i]
        if np.isnan(f) and (support[i] > 0 or cm[:, i].sum() > 0):
            f = 0.0
        per_class[str(lab)] = {
            "precision": _nan_to_none(prec[i]),
            "recall": _nan_to_none(rec[i]),
            "f1": _nan_to_none(f),
            "support": int(support[i]),
        }
    result.update(
        n=int(len(t)),
        labels=[str(x) for x in labels],
        per_class=per_class,
        confusion=cm.astype(int).tolist(),
        confusion_norm=norm.tolist(),
    )
    return result


def aggregate(fold_results: dict, labels: Sequence) -> dict:
    """Per-fold metrics, fold mean ± std of each scalar metric, and pooled metrics.

    ``fold_results``: {fold name: {"y_true": [...], "y_pred": [...], ...}} (other keys ignored).
    Returns {"labels", "n_folds", "folds": {name: metrics}, "mean": {metric: v},
    "std": {metric: v} (population std, ddof=0), "pooled": metrics over all folds' predictions}.

    Multi-label runs: when every fold also has ``true_sets`` / ``pred_sets`` (emotions present /
    predicted per item), each fold and the pool get ``multilabel_metrics`` (per emotion Eq. 4-6) under
    ``"multilabel"`` and the means over emotions join the scalars as ``ml_wa``, ``ml_accuracy``,
    ``ml_f1`` (in ``mean``, ``std``, ``pooled`` and each fold's metrics).
    """
    labels = _check_labels(labels)
    if not fold_results:
        raise ValueError("no fold results to aggregate")
    folds, all_true, all_pred = {}, [], []
    for name, res in fold_results.items():
        for key in ("y_true", "y_pred"):
            if key not in res:
                raise ValueError(f"fold {name!r}: missing {key!r}")
        try:
            folds[str(name)] = compute_metrics(res["y_true"], res["y_pred"], labels)
        except ValueError as exc:
            raise ValueError(f"fold {name!r}: {exc}") from exc
        all_true.extend(res["y_true"])
        all_pred.extend(res["y_pred"])
    pooled = compute_metrics(all_true, all_pred, labels)
    multi = [("true_sets" in r and "pred_sets" in r) for r in fold_results.values()]
    if any(multi) and not all(multi):
        raise ValueError("some folds have multi-label sets (true_sets / pred_sets) and some do not")
    scalars = SCALAR_METRICS
    if all(multi):
        scalars += MULTILABEL_METRICS
        true_all, pred_all = [], []
        for name, res in fold_results.items():
            try:
                folds[str(name)]["multilabel"] = _with_means(multilabel_metrics(res["true_sets"], res["pred_sets"], labels))
            except ValueError as exc:
                raise ValueError(f"fold {name!r}: {exc}") from exc
            folds[str(name)].update(folds[str(name)]["multilabel"]["scalars"])
            true_all += list(res["true_sets"])
            pred_all += list(res["pred_sets"])
        pooled["multilabel"] = _with_means(multilabel_metrics(true_all, pred_all, labels))
        pooled.update(pooled["multilabel"]["scalars"])
    mean, std = {}, {}
    for m in scalars:
        vals = np.array([f[m] for f in folds.values() if f[m] is not None], dtype=float)
        mean[m] = float(vals.mean()) if vals.size else None
        std[m] = float(vals.std(ddof=0)) if vals.size else None
    return {
        "labels": [str(x) for x in labels],
        "n_folds": len(folds),
        "folds": folds,
        "mean": mean,
        "std": std,
        "pooled": pooled,
    }


def _with_means(result: dict) -> dict:
    """A `multilabel_metrics` result plus its means as the scalars ml_wa, ml_accuracy, ml_f1."""
    return {**result, "scalars": {f"ml_{k}": result["mean"][k] for k in ("wa", "accuracy", "f1")}}


def binary_weighted_accuracy(y_true: Sequence[bool], y_pred: Sequence[bool]) -> float:
    """Makhmudov et al. 2024, Eq. 6: WA = (TP × N/P + TN) / (2N) for one binary task.

    P / N: the number of positive / negative items in ``y_true``. Undefined (an error naming
    which is missing) when the truth has no positive or no negative item."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    pos, neg = int(t.sum()), int((~t).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"binary WA needs positive and negative items in y_true (P={pos}, N={neg})")
    tp, tn = int((t & p).sum()), int((~t & ~p).sum())
    return (tp * neg / pos + tn) / (2 * neg)


def _binary(values: Sequence, what: str) -> np.ndarray:
    arr = np.asarray(list(values))
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of booleans")
    bad = [i for i, v in enumerate(arr.tolist()) if v not in (0, 1, True, False)]
    if bad:
        raise ValueError(f"{what}[{bad[0]}] = {arr.tolist()[bad[0]]!r} is not a boolean (0/1)")
    return arr.astype(bool)


def multilabel_metrics(true_sets: Sequence[Sequence[str]], pred_sets: Sequence[Sequence[str]],
                       labels: Sequence[str]) -> dict:
    """Per-emotion binary metrics of a multi-label task and their unweighted mean over emotions.

    ``true_sets[i]`` / ``pred_sets[i]``: the emotions present / predicted for item i (any of
    ``labels``). Per emotion: ``wa`` (Eq. 6; None when the truth has no positive or no negative
    item), ``accuracy`` (Eq. 4), ``f1`` (Eq. 5; None when there is nothing to score), ``support``
    (positives). ``mean``: each metric averaged over the emotions where it is defined."""
    labels = _check_labels(labels)
    if len(true_sets) != len(pred_sets):
        raise ValueError(f"true_sets has {len(true_sets)} items but pred_sets has {len(pred_sets)}")
    if not true_sets:
        raise ValueError("no predictions to score (empty true_sets)")
    known = set(labels)
    for what, sets in (("true_sets", true_sets), ("pred_sets", pred_sets)):
        for i, s in enumerate(sets):
            unknown = sorted(set(s) - known)
            if unknown:
                raise ValueError(f"{what}[{i}] has {unknown}, not among the labels {labels}")
    per: dict[str, dict] = {}
    for lab in labels:
        t = np.array([lab in s for s in true_sets])
        p = np.array([lab in s for s in pred_sets])
        tp, tn = int((t & p).sum()), int((~t & ~p).sum())
        fp, fn = int((~t & p).sum()), int((t & ~p).sum())
        per[str(lab)] = {
            "wa": binary_weighted_accuracy(t, p) if 0 < t.sum() < t.size else None,
            "accuracy": (tp + tn) / t.size,
            "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None,
            "support": int(t.sum()),
        }
    mean = {}
    for key in ("wa", "accuracy", "f1"):
        vals = [m[key] for m in per.values() if m[key] is not None]
        mean[key] = float(np.mean(vals)) if vals else None
    return {"labels": [str(x) for x in labels], "n": len(true_sets), "per_label": per, "mean": mean}
