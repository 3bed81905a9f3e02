"""KFP output artifacts: scalar metrics and the confusion matrix the Kubeflow UI renders.

Works with ``kfp.dsl.Metrics`` and ``kfp.dsl.ClassificationMetrics`` (inside a component they are
the ``Output[Metrics]`` / ``Output[ClassificationMetrics]`` parameters).
"""

from __future__ import annotations

import math
from typing import Sequence

from emoflow.evaluation.metrics import MULTILABEL_METRICS, SCALAR_METRICS


def _num(name: str, value) -> float:
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"metric {name!r} is not a finite number ({value!r})")
    return v


def log_kfp_metrics(metrics_artifact, classification_artifact, result: dict,
                    labels: Sequence[str], prefix: str = "") -> dict[str, float]:
    """Log ``result`` to KFP artifacts; returns the scalar metrics logged.

    ``result`` is either an ``aggregate`` output (logs ``<m>_mean``, ``<m>_std``, ``<m>_pooled``
    for UA/WA/WF1/MF1 plus ``n_folds`` and ``n``; the confusion matrix is the pooled one) or a
    single ``compute_metrics`` output (logs ``ua``, ``wa``, ``wf1``, ``mf1``, ``n``).
    A multi-label result (``pooled["multilabel"]``) also logs ``ml_wa`` / ``ml_accuracy`` / ``ml_f1``
    (mean, std, pooled: the means over emotions of Eq. 6, 4, 5) and ``ml_wa_<emotion>`` (pooled
    Eq. 6 per emotion, where defined). Either artifact may be None to skip it. ``prefix`` is put before every metric name
    (e.g. "a2_" when one artifact holds several architectures).
    """
    labels = [str(x) for x in labels]
    single = result.get("pooled", result)
    if list(single.get("labels", labels)) != labels:
        raise ValueError(f"result labels {single.get('labels')} differ from labels {labels}")
    scalars: dict[str, float] = {}
    if "pooled" in result:
        for m in SCALAR_METRICS:
            scalars[f"{m}_mean"] = _num(m, result["mean"][m])
            scalars[f"{m}_std"] = _num(m, result["std"][m])
            scalars[f"{m}_pooled"] = _num(m, result["pooled"][m])
        scalars["n_folds"] = float(result["n_folds"])
        if "multilabel" in single:
            for m in MULTILABEL_METRICS:
                for agg, where in (("mean", result["mean"]), ("std", result["std"]), ("pooled", single)):
                    if where[m] is not None:
                        scalars[f"{m}_{agg}"] = _num(m, where[m])
            for lab, per in single["multilabel"]["per_label"].items():
                if per["wa"] is not None:
                    scalars[f"ml_wa_{lab}"] = _num(f"ml_wa_{lab}", per["wa"])
    else:
        for m in SCALAR_METRICS:
            scalars[m] = _num(m, result[m])
    scalars["n"] = float(single["n"])
    scalars = {prefix + k: v for k, v in scalars.items()}
    if metrics_artifact is not None:
        for k, v in scalars.items():
            metrics_artifact.log_metric(k, v)
    if classification_artifact is not None:
        matrix = [[int(c) for c in row] for row in single["confusion"]]
        if len(matrix) != len(labels):
            raise ValueError(f"confusion matrix has {len(matrix)} rows for {len(labels)} labels")
        classification_artifact.log_confusion_matrix(labels, matrix)
    return scalars
