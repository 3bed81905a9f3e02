"""Drift statistics (one definition, see emoflow.monitoring.drift) against hand-computed and scipy
values; the time window; the PromQL rendering of the formulas (update cost: benchmarks/bench_drift.py)."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2, norm, power_divergence

from emoflow.monitoring import drift
from emoflow.monitoring.drift import DriftWindow, compute, g_threshold, min_count

UNIFORM4 = {"neutral": 0.25, "happy": 0.25, "sad": 0.25, "angry": 0.25}


class Clock:
    def __init__(self, t=12345.0):
        self.t = t

    def __call__(self):
        return self.t


def fill(win, counts):
    for label, n in counts.items():
        for _ in range(n):
            win.add(label)


def test_stats_match_hand_and_scipy():
    s = compute({"neutral": 45, "happy": 19, "sad": 18, "angry": 18}, UNIFORM4)
    assert s.count == 100
    p = [0.45, 0.19, 0.18, 0.18]
    assert s.psi == pytest.approx(sum((pi - 0.25) * math.log(pi / 0.25) for pi in p), rel=1e-12)
    assert s.js == pytest.approx(jensenshannon(p, [0.25] * 4, base=2) ** 2, rel=1e-9)
    # G test = scipy's log-likelihood power divergence; hand: 2 sum n ln(n / 25)
    g = power_divergence([45, 19, 18, 18], [25] * 4, lambda_="log-likelihood")
    assert s.g == pytest.approx(g.statistic, rel=1e-12)
    assert s.g == pytest.approx(2 * (45 * math.log(1.8) + 19 * math.log(0.76) + 36 * math.log(0.72)), rel=1e-12)
    # Wilson–Hilferty z-score: hand formula, and its normal tail is the chi-square p-value within 40 %
    d = 3
    z = ((s.g / d) ** (1 / 3) - (1 - 2 / (9 * d))) / math.sqrt(2 / (9 * d))
    assert s.g_zscore == pytest.approx(z, rel=1e-12)
    assert norm.sf(s.g_zscore) == pytest.approx(g.pvalue, rel=0.4)
    assert s.shares == {"neutral": 0.45, "happy": 0.19, "sad": 0.18, "angry": 0.18}
    assert s.share_delta["neutral"] == pytest.approx(0.2)


@pytest.mark.parametrize("classes", [2, 4, 8])
@pytest.mark.parametrize("z", [3.719, 4.75])
def test_zscore_threshold_is_a_known_false_alarm_level(classes, z):
    g = g_threshold(z, classes)
    # the inverse is exact, and the chi-square tail at the threshold is at most the normal tail
    d = classes - 1
    assert ((g / d) ** (1 / 3) - (1 - 2 / (9 * d))) / math.sqrt(2 / (9 * d)) == pytest.approx(z)
    assert chi2.sf(g, d) <= norm.sf(z) * 1.05  # Wilson–Hilferty is conservative at these levels


def test_empty_bins_zero_reference_and_no_nan():
    s = compute({"a": 20}, {"a": 0.5, "b": 0.5})
    assert s.psi == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5), rel=1e-12)
    assert s.js == pytest.approx(jensenshannon([1, 0], [0.5, 0.5], base=2) ** 2, rel=1e-9)
    assert s.g == pytest.approx(2 * 20 * math.log(2), rel=1e-12)  # 0 ln 0 = 0
    # a zero reference share is clipped: finite, very significant
    s0 = compute({"a": 5, "b": 5}, {"a": 1.0, "b": 0.0})
    assert all(math.isfinite(v) for v in (s0.psi, s0.js, s0.g, s0.g_zscore)) and s0.g_zscore > 7
    # identical shares: every divergence 0
    same = compute({"a": 30, "b": 70}, {"a": 0.3, "b": 0.7})
    assert same.psi == same.js == 0 and same.g == pytest.approx(0, abs=1e-9)


def test_minimum_count():
    assert min_count({"neutral": 1 / 15, **{k: 2 / 15 for k in "abcdefg"}}) == 75  # 5 / (1/15)
    assert min_count({"a": 0.25, "b": 0.75}) == 20
    assert min_count({"a": 0.0, "b": 0.3, "c": 0.7}) == 17  # zero shares ignored
    ref = {"a": 0.25, "b": 0.75}
    assert compute({"a": 19}, ref) is None
    assert compute({"a": 19, "b": 1}, ref) is not None
    with pytest.raises(ValueError, match=r"outside the reference \['a', 'b'\]: \['c'\]"):
        compute({"c": 30}, ref)


def test_time_window_evicts_old_slots():
    clock = Clock()
    win = DriftWindow({"a": 0.5, "b": 0.5}, window="60s", slots=6, clock=clock)
    fill(win, {"a": 10})
    clock.t += 30
    fill(win, {"b": 3})
    assert win.counts() == {"a": 10, "b": 3}
    clock.t += 35  # the "a" slot (10 s wide) is older than 60 s now
    assert win.counts() == {"a": 0, "b": 3} and win.count == 3
    clock.t += 3600  # far past: everything gone, in O(slots)
    assert win.count == 0 and win.stats() is None
    fill(win, {"a": 10, "b": 10})
    assert win.stats().psi == 0
    win.reset()
    assert win.count == 0


def test_matches_numpy_recount_on_random_stream():
    rng = np.random.default_rng(3)
    labels = ["w", "x", "y", "z"]
    clock = Clock(0.0)
    win = DriftWindow(dict(zip(labels, [0.1, 0.2, 0.3, 0.4])), window="100s", slots=20, clock=clock)
    times = np.cumsum(rng.exponential(0.7, size=2000))
    stream = rng.choice(4, size=2000, p=[0.4, 0.3, 0.2, 0.1])
    for i, (t, k) in enumerate(zip(times, stream)):
        clock.t = float(t)
        win.add(labels[k])
        if i % 97 == 96:
            # the window holds the slots (5 s each) from floor(t / 5) - 19 to floor(t / 5)
            start = (math.floor(t / 5) - 19) * 5
            keep = (times[: i + 1] >= start)
            want = [int(((stream[: i + 1] == j) & keep).sum()) for j in range(4)]
            assert list(win.counts().values()) == want


def test_bad_window_settings_are_named():
    with pytest.raises(ValueError, match="drift window must be a positive Prometheus duration"):
        DriftWindow(UNIFORM4, window="500")
    with pytest.raises(ValueError, match="drift window must be"):
        DriftWindow(UNIFORM4, window=0)
    with pytest.raises(ValueError, match="slots must be a positive integer"):
        DriftWindow(UNIFORM4, slots=0)
    with pytest.raises(ValueError, match="'bored' is not in the reference"):
        DriftWindow(UNIFORM4).add("bored")


def test_promql_rendering_of_vector_matching():
    names = {"n": "n_s", "N": "N_s", "q": "q_s", "K": "K_s", "qmin": "qmin_s"}
    assert drift.promql(drift.n / drift.N, names) == "(n_s / on (model, version) group_left () N_s)"
    assert drift.promql(drift.N * drift.q, names) == "(N_s * on (model, version) group_right () q_s)"
    assert drift.promql(drift.n - drift.q, names) == "(n_s - on (model, version, emotion) q_s)"
    assert drift.promql(drift.total(drift.ln(drift.clamp_min(drift.q, 1e-4)) * 2), names) == \
        "sum by (model, version) ((ln(clamp_min(q_s, 0.0001)) * 2))"
    assert drift.promql(1 - 2 / (9 * (drift.K - 1)), names) == "(1 - (2 / (9 * (K_s - 1))))"
    assert drift.promql(drift.sqrt(drift.clamp_min(4.0, 9.0)) + drift.K, names) == "(3 + K_s)"  # constants folded
    with pytest.raises(ValueError, match=r"no series named for variables \['g'\]"):
        drift.promql(drift.BY_NAME["g_zscore"], names)
    with pytest.raises(ValueError, match="total\\(\\) sums an emotion-level"):
        drift.total(drift.N)


def test_python_evaluation_follows_promql_float_semantics():
    env = {"n": np.array([0.0]), "q": np.array([0.0]), "N": np.array([0.0]), "K": np.float64(1.0), "qmin": np.float64(0)}
    assert np.isnan((drift.n / drift.N).value(env)).all()  # 0 / 0
    assert (drift.ln(drift.n)).value(env)[0] == -math.inf
    assert np.isnan((drift.sqrt(drift.N - 1)).value(env)).all()
    assert np.isnan(((drift.N - 1) ** 0.5).value(env)).all()
    assert np.isnan(drift.clamp_min(drift.n / drift.N, 1e-4).value(env)).all()  # clamp_min keeps NaN
    assert (1 / drift.N).value(env)[0] == math.inf


def test_batch_evaluation_equals_one_window_at_a_time():
    rng = np.random.default_rng(5)
    ref = [0.31, 0.30, 0.20, 0.19]
    counts = rng.multinomial(60, [0.4, 0.3, 0.2, 0.1], size=50)
    batch = drift.compute_batch(counts, ref)
    for i in (0, 17, 49):
        one = compute(dict(zip("abcd", counts[i].tolist())), dict(zip("abcd", ref)))
        for stat in drift.STATISTICS:
            got = batch[stat.name][i]
            want = list(one.values[stat.name].values()) if stat.per_emotion else one.values[stat.name]
            assert np.allclose(got, want, rtol=1e-12, atol=0)
