"""DriftWindow statistics against hand-computed and scipy values, minimum count, O(1) cost."""

import math
import time

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare

from emoflow.monitoring.drift import DriftWindow, default_min_count, js_divergence, psi


def fill(win, counts):
    for label, n in counts.items():
        for _ in range(n):
            win.add(label)


def test_stats_match_hand_and_scipy():
    ref = {"neutral": 0.25, "happy": 0.25, "sad": 0.25, "angry": 0.25}
    win = DriftWindow(ref, window=100)
    fill(win, {"neutral": 45, "happy": 19, "sad": 18, "angry": 18})
    s = win.stats()
    assert s.count == 100
    p = [0.45, 0.19, 0.18, 0.18]
    hand_psi = sum((pi - 0.25) * math.log(pi / 0.25) for pi in p)
    assert s.psi == pytest.approx(hand_psi, rel=1e-12)
    assert s.psi == pytest.approx(0.2 * math.log(1.8) + 0.06 * -math.log(0.76) + 2 * 0.07 * -math.log(0.72), rel=1e-12)
    assert s.js == pytest.approx(jensenshannon(p, [0.25] * 4, base=2) ** 2, rel=1e-9)
    ref_chi = chisquare([45, 19, 18, 18], [25, 25, 25, 25])
    # hand: (20² + 6² + 7² + 7²) / 25 = 21.36
    assert s.chi2 == pytest.approx(21.36)
    assert s.chi2 == pytest.approx(ref_chi.statistic)
    assert s.chi2_pvalue == pytest.approx(ref_chi.pvalue, rel=1e-9)


def test_empty_bin_uses_epsilon_and_stays_finite():
    ref = {"a": 0.5, "b": 0.5}
    win = DriftWindow(ref, window=20, epsilon=1e-4)
    fill(win, {"a": 20})
    s = win.stats()
    hand = (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert s.psi == pytest.approx(hand, rel=1e-12)
    # hand: m = (0.75, 0.25); JS = 1/2 (1 log2(1/0.75)) + 1/2 (0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25))
    hand_js = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * 1.0)
    assert s.js == pytest.approx(hand_js, rel=1e-12)
    assert s.js == pytest.approx(jensenshannon([1, 0], [0.5, 0.5], base=2) ** 2, rel=1e-9)
    assert math.isfinite(s.psi) and 0 < s.chi2_pvalue < 1e-3
    # a zero reference share is smoothed too: no division by zero
    win0 = DriftWindow({"a": 1.0, "b": 0.0}, window=10, min_count=5)
    fill(win0, {"a": 5, "b": 5})
    s0 = win0.stats()
    assert math.isfinite(s0.psi) and math.isfinite(s0.chi2) and s0.chi2_pvalue < 1e-6


def test_psi_and_js_helpers_zero_for_equal():
    q = [0.1, 0.2, 0.7]
    assert psi(q, q) == 0.0
    assert js_divergence(q, q) == pytest.approx(0.0, abs=1e-15)


def test_minimum_count_default_and_explicit():
    ref = {"neutral": 1 / 15, **{k: 2 / 15 for k in "abcdefg"}}
    assert default_min_count(ref) == 75  # 5 / (1/15)
    assert default_min_count({"a": 0.25, "b": 0.75}) == 20
    assert default_min_count({"a": 0.0, "b": 0.3, "c": 0.7}) == 17  # zero shares ignored
    win = DriftWindow({"a": 0.25, "b": 0.75}, window=50)
    assert win.min_count == 20
    fill(win, {"a": 19})
    assert win.stats() is None
    win.add("b")
    assert win.stats() is not None
    custom = DriftWindow({"a": 0.25, "b": 0.75}, window=50, min_count=30)
    fill(custom, {"a": 29})
    assert custom.stats() is None
    with pytest.raises(ValueError, match="exceeds the window size"):
        DriftWindow({"a": 0.01, "b": 0.99}, window=100)  # needs 500


def test_sliding_window_evicts_oldest():
    win = DriftWindow({"a": 0.5, "b": 0.5}, window=10, min_count=10)
    fill(win, {"a": 10})
    assert win.counts() == {"a": 10, "b": 0}
    fill(win, {"b": 3})
    assert win.counts() == {"a": 7, "b": 3} and win.count == 10
    fill(win, {"b": 20})
    assert win.counts() == {"a": 0, "b": 10}
    win.reset()
    assert win.count == 0 and win.stats() is None


def test_matches_numpy_recount_on_random_stream():
    rng = np.random.default_rng(3)
    labels = ["w", "x", "y", "z"]
    win = DriftWindow(dict(zip(labels, [0.1, 0.2, 0.3, 0.4])), window=37, min_count=37)
    stream = rng.choice(4, size=500, p=[0.4, 0.3, 0.2, 0.1])
    for i, k in enumerate(stream):
        win.add(labels[k])
        if i % 50 == 49:
            tail = stream[max(0, i - 36): i + 1]
            assert list(win.counts().values()) == [int((tail == j).sum()) for j in range(4)]


def test_update_cost_under_20_us():
    from prometheus_client import CollectorRegistry

    from emoflow.monitoring.metrics import PredictionMetrics

    ref = {k: 1 / 8 for k in "abcdefgh"}
    m = PredictionMetrics(CollectorRegistry(), window=500)
    m.set_reference("bench", "v1", ref)
    labels = list(ref)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(20000):
            m.observe("bench", "v1", labels[i & 7], 0.8, "audio+text")
        best = min(best, (time.perf_counter() - t) / 20000 * 1e6)
    assert best <= 20, f"{best:.1f} µs per observe"
