"""KFP output artifacts: scalar metrics and the confusion matrix the Kubeflow UI renders.

Works with ``kfp.dsl.Metrics`` and ``kfp.dsl.ClassificationMetrics`` (inside a component they are
the ``Output[Metrics]`` / ``Output[ClassificationMetrics]`` parameters).
"""

from __future__ import annotations

import math
from typing import Sequence

from emoflow.evaluation.metrics import SCALAR_METRICS


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
    Either artifact may be None to skip it. ``prefix`` is put before every metric name
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
