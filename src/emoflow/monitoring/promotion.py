"""Promotion policy: a candidate replaces production only if it beats it on the chosen metric."""

from __future__ import annotations

import math
from typing import Any, Mapping


def _metric(metrics: Mapping[str, Any], metric: str, which: str) -> float:
    value: Any = metrics
    for part in metric.split("."):  # "pooled.ua" reaches nested dicts
        if not isinstance(value, Mapping) or part not in value:
            raise ValueError(f"{which} metrics have no {metric!r} (keys: {sorted(metrics)})")
        value = value[part]
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{which} metric {metric!r} is not a number: {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{which} metric {metric!r} is not finite: {value!r}")
    return out


def should_promote(candidate_metrics: Mapping[str, Any], production_metrics: Mapping[str, Any] | None,
                   metric: str = "ua", margin: float = 0.0) -> tuple[bool, str]:
    """Decide whether the candidate becomes production -> (promote, reason).

    Promote when there is no production model, or when candidate[metric] > production[metric] + margin
    (strictly: a tie does not replace production). `metric` may be dotted for nested dicts
    ("pooled.ua"); `margin` is in the metric's own units.
    """
    if not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"promotion margin must be a finite number >= 0, got {margin!r}")
    cand = _metric(candidate_metrics, metric, "candidate")
    if production_metrics is None:
        return True, f"no production model; candidate {metric}={cand:.4g} promoted"
    prod = _metric(production_metrics, metric, "production")
    if cand > prod + margin:
        return True, f"candidate {metric}={cand:.4g} beats production {prod:.4g} by more than margin {margin:g}"
    return False, (f"not promoted: candidate {metric}={cand:.4g} does not beat production {prod:.4g} "
                   f"by more than margin {margin:g}")
