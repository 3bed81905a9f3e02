"""Prometheus metrics of the emoflow predictor, including in-process drift gauges.

API used by the serving code (keep it exactly this)::

    from emoflow.monitoring.metrics import PredictionMetrics, default_metrics

    m = default_metrics()          # one per process, on prometheus_client's global REGISTRY,
                                   # so it appears on the KServe server's /metrics
    # or PredictionMetrics(registry=CollectorRegistry(), window="10m") for a private registry (tests)

    m.set_reference(model, version, shares)       # shares: {emotion: share}, the registry's
                                                  # reference distribution of predicted emotions
    m.observe(model, version, label, confidence, mode)   # once per answered instance
    m.error(model, reason)                        # once per rejected/failed request

`mode` is one of MODES: "audio+text" (audio with the caller's text), "audio-only" (no text used),
"asr-text" (text transcribed by the server's ASR), "text-only" (a model without audio inputs,
answering from the caller's text alone). `reason` is a short fixed token such as
"bad_base64", "not_audio", "too_long", "empty", "bad_type", "internal" (free text is refused so
label cardinality stays bounded: [a-z0-9_] only, ≤ 40 chars).

Series exposed (label names fixed):

- emoflow_predictions_total{model,version,emotion}        counter
- emoflow_prediction_confidence{model,version}           histogram (top-class probability)
- emoflow_modality_total{model,mode}                     counter
- emoflow_request_errors_total{model,reason}             counter
- emoflow_reference_share{model,version,emotion}         gauge, set by set_reference
- emoflow_drift_<statistic>{model,version[,emotion]}   gauges, one per statistic of
  emoflow.monitoring.drift.STATISTICS: share, share_delta (per emotion), psi, js, g, g_zscore
- emoflow_drift_window_count{model,version}              gauge, predictions in the window

The drift gauges are computed at scrape time from the counts of the last `window` (default 10m,
the window of the recording rules; observe itself is O(1)) by the same formulas the recording rules
`emoflow:drift_<statistic>:increase10m` are rendered from, so a replica's gauge equals the rule over
that replica's counters. They exist once set_reference was called for (model, version) and read NaN
until the window holds enough predictions (>= 5 expected in the rarest reference class).
set_reference also creates emoflow_predictions_total at 0 for every reference emotion, so the
Prometheus rules see emotions that are never predicted (their share is 0, not missing).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from typing import Callable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from emoflow.monitoring.drift import (DEFAULT_SLOTS, DEFAULT_WINDOW, STATISTICS, DriftStats, DriftWindow,
                                      validate_shares)

MODES = ("audio+text", "audio-only", "asr-text", "text-only")
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_REASON = re.compile(r"^[a-z0-9_]{1,40}$")

# every metric family name this module exposes (the dashboard/rule tests check against these)
METRIC_NAMES = (
    "emoflow_predictions_total",
    "emoflow_prediction_confidence",
    "emoflow_modality_total",
    "emoflow_request_errors_total",
    "emoflow_reference_share",
    *(f"emoflow_drift_{stat.name}" for stat in STATISTICS),
    "emoflow_drift_window_count",
)


def _check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string, got {value!r}")
    return value


class PredictionMetrics:
    """Counters, histogram and drift gauges of one predictor process (see module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        window: str | float = DEFAULT_WINDOW,
        slots: int = DEFAULT_SLOTS,
        confidence_buckets: tuple[float, ...] = CONFIDENCE_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the metric families in `registry` (None: not registered anywhere).

        window (a Prometheus duration such as "10m", or seconds) and slots configure the drift
        window of each (model, version); keep `window` equal to the rules' drift_window.
        """
        self.window = window
        self.slots = slots
        self.clock = clock
        DriftWindow({"a": 0.5, "b": 0.5}, window, slots=slots, clock=clock)  # bad settings fail here
        kw = {"registry": registry}
        self.predictions = Counter(
            "emoflow_predictions", "Predictions answered, by predicted emotion",
            ["model", "version", "emotion"], **kw)
        self.confidence = Histogram(
            "emoflow_prediction_confidence", "Probability of the predicted emotion",
            ["model", "version"], buckets=confidence_buckets, **kw)
        self.modality = Counter(
            "emoflow_modality", "Predictions by input modality mode (audio+text, audio-only, asr-text, text-only)",
            ["model", "mode"], **kw)
        self.errors = Counter(
            "emoflow_request_errors", "Requests rejected or failed, by reason",
            ["model", "reason"], **kw)
        self.reference_share = Gauge(
            "emoflow_reference_share", "Reference (training-time) share of each predicted emotion",
            ["model", "version", "emotion"], **kw)
        self.drift_gauges = {
            stat.name: Gauge(f"emoflow_drift_{stat.name}", f"{stat.help} (in-process window of this replica)",
                             ["model", "version", "emotion"] if stat.per_emotion else ["model", "version"], **kw)
            for stat in STATISTICS
        }
        self.drift_count = Gauge(
            "emoflow_drift_window_count", "Predictions currently in the drift window",
            ["model", "version"], **kw)
        self._windows: dict[tuple[str, str], DriftWindow] = {}
        self._cache: dict[tuple[str, str], tuple[tuple[int, int], DriftStats | None]] = {}
        self._lock = threading.Lock()

    # -- API used by serving --------------------------------------------------------------

    def set_reference(self, model: str, version: str, shares: Mapping[str, float]) -> None:
        """Install the reference distribution {emotion: share} of (model, version).

        Sets emoflow_reference_share, creates the prediction counters at 0 for each emotion and
        (re)starts the drift window empty. Raises ValueError for bad shares.
        """
        key = (_check_name("model", model), _check_name("version", version))
        ref = validate_shares(shares)
        win = DriftWindow(ref, self.window, slots=self.slots, clock=self.clock)
        with self._lock:
            old = self._windows.get(key)
            if old is not None:
                for emotion in old.labels:
                    if emotion not in ref:
                        self.reference_share.remove(model, version, emotion)
                        for stat in STATISTICS:
                            if stat.per_emotion:
                                self.drift_gauges[stat.name].remove(model, version, emotion)
            self._windows[key] = win
            self._cache.pop(key, None)
        for emotion, share in ref.items():
            self.reference_share.labels(model, version, emotion).set(share)
            self.predictions.labels(model, version, emotion)  # exists at 0 from now on
        for stat in STATISTICS:
            gauge = self.drift_gauges[stat.name]
            if stat.per_emotion:
                for emotion in ref:
                    gauge.labels(model, version, emotion).set_function(
                        lambda name=stat.name, e=emotion: self._stat(key, name, e))
            else:
                gauge.labels(model, version).set_function(lambda name=stat.name: self._stat(key, name))
        self.drift_count.labels(model, version).set_function(lambda: float(win.count))

    def observe(self, model: str, version: str, label: str, confidence: float, mode: str) -> None:
        """Record one answered prediction: its label, top-class confidence and modality mode."""
        _check_name("model", model)
        _check_name("version", version)
        _check_name("label", label)
        if mode not in MODES:
            raise ValueError(f"modality mode {mode!r} is not one of {MODES}")
        try:
            conf = float(confidence)
        except (TypeError, ValueError):
            raise ValueError(f"confidence must be a number, got {confidence!r}") from None
        if not (0.0 <= conf <= 1.0):  # also rejects NaN
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        win = self._windows.get((model, version))
        if win is not None:
            win.add(label)  # raises for a label outside the reference, before anything is counted
        self.predictions.labels(model, version, label).inc()
        self.confidence.labels(model, version).observe(conf)
        self.modality.labels(model, mode).inc()

    def error(self, model: str, reason: str) -> None:
        """Count one rejected or failed request of `model` with a short reason token."""
        _check_name("model", model)
        if not isinstance(reason, str) or not _REASON.match(reason):
            raise ValueError(f"error reason must match [a-z0-9_]{{1,40}}, got {reason!r}")
        self.errors.labels(model, reason).inc()

    # -- reading back -----------------------------------------------------------------------

    def drift(self, model: str, version: str) -> DriftStats | None:
        """Current drift statistics of (model, version), None below the minimum count.

        Raises KeyError when no reference was set for it."""
        try:
            win = self._windows[(model, version)]
        except KeyError:
            raise KeyError(f"no reference distribution set for model {model!r} version {version!r}") from None
        return win.stats()

    def _stat(self, key: tuple[str, str], name: str, emotion: str | None = None) -> float:
        # one computation per scrape and window state, shared by every drift gauge of the key
        win = self._windows.get(key)
        if win is None:
            return math.nan
        state = win.state()
        cached = self._cache.get(key)
        if cached is None or cached[0] != state:
            cached = (state, win.stats())
            self._cache[key] = cached
        stats = cached[1]
        return math.nan if stats is None else float(stats.value(name, emotion))


_default: PredictionMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> PredictionMetrics:
    """The process-wide PredictionMetrics on the global REGISTRY (created on first call).

    The drift window comes from env EMOFLOW_DRIFT_WINDOW, a Prometheus duration (default 10m, the
    recording rules' window) or seconds."""
    global _default
    with _default_lock:
        if _default is None:
            raw = os.environ.get("EMOFLOW_DRIFT_WINDOW", "") or DEFAULT_WINDOW
            try:
                window: str | float = float(raw)
            except ValueError:
                window = raw
            try:
                _default = PredictionMetrics(window=window)
            except ValueError as exc:
                raise ValueError(f"environment variable EMOFLOW_DRIFT_WINDOW: {exc}") from None
        return _default
