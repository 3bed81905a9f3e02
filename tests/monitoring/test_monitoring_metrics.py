"""PredictionMetrics on a private registry: exact metric names, labels and values."""

import math
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from emoflow.monitoring.metrics import METRIC_NAMES, MODES, PredictionMetrics

REF = {"neutral": 0.4, "happy": 0.3, "sad": 0.2, "angry": 0.1}


@pytest.fixture()
def reg():
    return CollectorRegistry()


def val(reg, name, **labels):
    return reg.get_sample_value(name, labels)


def test_counters_histogram_modality_errors(reg):
    m = PredictionMetrics(reg)
    m.observe("emo", "v1", "happy", 0.85, "audio+text")
    m.observe("emo", "v1", "happy", 0.55, "asr-text")
    m.observe("emo", "v2", "sad", 0.35, "audio-only")
    m.error("emo", "bad_base64")
    m.error("emo", "bad_base64")
    m.error("emo", "too_long")
    assert val(reg, "emoflow_predictions_total", model="emo", version="v1", emotion="happy") == 2
    assert val(reg, "emoflow_predictions_total", model="emo", version="v2", emotion="sad") == 1
    assert val(reg, "emoflow_prediction_confidence_count", model="emo", version="v1") == 2
    assert val(reg, "emoflow_prediction_confidence_sum", model="emo", version="v1") == pytest.approx(1.4)
    assert val(reg, "emoflow_prediction_confidence_bucket", model="emo", version="v1", le="0.6") == 1
    assert val(reg, "emoflow_prediction_confidence_bucket", model="emo", version="v1", le="0.9") == 2
    assert val(reg, "emoflow_modality_total", model="emo", mode="audio+text") == 1
    assert val(reg, "emoflow_modality_total", model="emo", mode="asr-text") == 1
    assert val(reg, "emoflow_modality_total", model="emo", mode="audio-only") == 1
    assert val(reg, "emoflow_request_errors_total", model="emo", reason="bad_base64") == 2
    assert val(reg, "emoflow_request_errors_total", model="emo", reason="too_long") == 1
    # no drift gauges without a reference
    assert val(reg, "emoflow_drift_psi", model="emo", version="v1") is None


def test_reference_creates_zero_counters_and_gauges(reg):
    m = PredictionMetrics(reg)
    m.set_reference("emo", "v1", REF)
    for emotion, share in REF.items():
        assert val(reg, "emoflow_reference_share", model="emo", version="v1", emotion=emotion) == pytest.approx(share)
        assert val(reg, "emoflow_predictions_total", model="emo", version="v1", emotion=emotion) == 0
    # below the minimum count the drift gauges exist but read NaN; the count gauge reads 0
    assert math.isnan(val(reg, "emoflow_drift_psi", model="emo", version="v1"))
    assert math.isnan(val(reg, "emoflow_drift_js", model="emo", version="v1"))
    assert math.isnan(val(reg, "emoflow_drift_g_zscore", model="emo", version="v1"))
    assert math.isnan(val(reg, "emoflow_drift_share", model="emo", version="v1", emotion="sad"))
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v1") == 0
    # a new reference with fewer emotions removes the stale share series
    m.set_reference("emo", "v1", {"neutral": 0.5, "happy": 0.5})
    assert val(reg, "emoflow_reference_share", model="emo", version="v1", emotion="sad") is None
    assert val(reg, "emoflow_drift_share", model="emo", version="v1", emotion="sad") is None
    assert val(reg, "emoflow_reference_share", model="emo", version="v1", emotion="happy") == 0.5


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_drift_gauges_after_min_count_and_over_time(reg):
    clock = Clock()
    m = PredictionMetrics(reg, window="10m", clock=clock)
    m.set_reference("emo", "v1", REF)  # min count = ceil(5 / 0.1) = 50
    labels = ["neutral"] * 20 + ["happy"] * 15 + ["sad"] * 10 + ["angry"] * 4
    for lab in labels:
        m.observe("emo", "v1", lab, 0.9, "audio+text")
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v1") == 49
    assert math.isnan(val(reg, "emoflow_drift_psi", model="emo", version="v1"))
    m.observe("emo", "v1", "angry", 0.9, "audio+text")  # 50 = exactly the reference proportions
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v1") == 50
    assert val(reg, "emoflow_drift_psi", model="emo", version="v1") == pytest.approx(0.0, abs=1e-12)
    assert val(reg, "emoflow_drift_js", model="emo", version="v1") == pytest.approx(0.0, abs=1e-12)
    assert val(reg, "emoflow_drift_g", model="emo", version="v1") == pytest.approx(0.0, abs=1e-9)
    assert val(reg, "emoflow_drift_share", model="emo", version="v1", emotion="neutral") == pytest.approx(0.4)
    clock.t += 300
    for _ in range(100):  # five minutes later: 100 "angry"
        m.observe("emo", "v1", "angry", 0.9, "audio+text")
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v1") == 150
    assert val(reg, "emoflow_drift_g_zscore", model="emo", version="v1") > 10
    clock.t += 400  # the first 50 left the 10-minute window: all "angry"
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v1") == 100
    assert val(reg, "emoflow_drift_psi", model="emo", version="v1") > 2
    assert val(reg, "emoflow_drift_share_delta", model="emo", version="v1", emotion="angry") == pytest.approx(0.9)
    stats = m.drift("emo", "v1")
    assert stats.shares["angry"] == 1.0 and stats.count == 100
    clock.t += 601  # nothing left
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v1") == 0
    assert math.isnan(val(reg, "emoflow_drift_g", model="emo", version="v1"))
    # other (model, version) pairs are independent
    m.set_reference("emo", "v2", REF)
    assert val(reg, "emoflow_drift_window_count", model="emo", version="v2") == 0


def test_exposition_has_exactly_the_documented_families(reg):
    m = PredictionMetrics(reg)
    m.set_reference("emo", "v1", REF)
    m.observe("emo", "v1", "sad", 0.5, "audio-only")
    m.error("emo", "empty")
    text = generate_latest(reg).decode()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    families = {f for f in families if not f.endswith("_created")}
    assert families == set(METRIC_NAMES)
    assert 'emoflow_predictions_total{emotion="sad",model="emo",version="v1"} 1.0' in text


@pytest.mark.parametrize("call, match", [
    (lambda m: m.observe("emo", "v1", "happy", 0.5, "video"), "modality mode 'video'"),
    (lambda m: m.observe("emo", "v1", "happy", 1.5, "audio+text"), "confidence must be in"),
    (lambda m: m.observe("emo", "v1", "happy", float("nan"), "audio+text"), "confidence must be in"),
    (lambda m: m.observe("emo", "v1", "happy", "high", "audio+text"), "confidence must be a number"),
    (lambda m: m.observe("", "v1", "happy", 0.5, "audio+text"), "model must be"),
    (lambda m: m.observe("emo", "v1", "bored", 0.5, "audio+text"), "'bored' is not in the reference"),
    (lambda m: m.error("emo", "Something went wrong!"), "error reason"),
    (lambda m: m.set_reference("emo", "v1", {"a": 0.5, "b": 0.6}), "sum to 1"),
    (lambda m: m.set_reference("emo", "v1", {"a": 1.2, "b": -0.2}), "'b' must be finite and >= 0"),
    (lambda m: m.set_reference("emo", "v1", {"a": 1.0}), "at least two labels"),
    (lambda m: PredictionMetrics(None, window="ten minutes"), "drift window must be a positive Prometheus duration"),
    (lambda m: PredictionMetrics(None, window=-5), "drift window must be"),
])
def test_bad_input_is_refused_with_a_named_error(reg, call, match):
    m = PredictionMetrics(reg)
    m.set_reference("emo", "v1", REF)
    with pytest.raises(ValueError, match=match):
        call(m)
    # nothing was counted by a refused observe
    assert val(reg, "emoflow_predictions_total", model="emo", version="v1", emotion="happy") == 0
    assert MODES == ("audio+text", "audio-only", "asr-text", "text-only")


def test_default_metrics_is_one_per_process_on_global_registry():
    # in a child process, so this suite's process-wide REGISTRY stays untouched for other tests
    code = """
import os
os.environ["EMOFLOW_DRIFT_WINDOW"] = "5m"
from prometheus_client import REGISTRY, generate_latest
import emoflow.monitoring.metrics as mm
first = mm.default_metrics()
assert mm.default_metrics() is first and first.window == "5m"
first.set_reference("m", "v1", {"a": 0.5, "b": 0.5})
first.observe("m", "v1", "a", 0.5, "audio+text")
assert REGISTRY.get_sample_value("emoflow_predictions_total", {"model": "m", "version": "v1", "emotion": "a"}) == 1
assert b"emoflow_drift_window_count" in generate_latest(REGISTRY)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    bad = subprocess.run([sys.executable, "-c", "import os; os.environ['EMOFLOW_DRIFT_WINDOW'] = '500 preds'\n"
                          "import emoflow.monitoring.metrics as mm; mm.default_metrics()"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "EMOFLOW_DRIFT_WINDOW" in bad.stderr and "'500 preds'" in bad.stderr
