"""Drift of the predicted-emotion distribution: each statistic declared once, computed twice.

Every drift statistic is a formula over the counts of one time window, written once below
(`STATISTICS`) with a tiny expression language, and turned into

- Python, evaluated by `DriftWindow.stats()` for the predictor's in-process gauges
  (`emoflow_drift_<name>`, one replica, see emoflow.monitoring.metrics), and
- PromQL, by `promql()`, for the Prometheus recording rules (`emoflow:drift_<name>:increase<W>`,
  summed over replicas, see emoflow.monitoring.rules),

so the gauge and the recording rule are the same function of the same counts (a test feeds one
stream to both, tests/monitoring/test_prometheus_integration.py). The variables are

    n    predictions of one emotion in the window        (PromQL: increase() of emoflow_predictions_total)
    N    predictions of the model version in the window  (sum of n)
    q    reference share of the emotion                  (emoflow_reference_share)
    K    emotions in the reference                       (count of q)
    qmin smallest positive reference share

and the statistics (p = n / N; eps = 1e-4 clips empty bins, tiny = 1e-12 only keeps 0·ln 0 at 0):

- share, share_delta (per emotion): p, p - q.
- psi: population stability index, sum (p' - q') ln(p' / q'), p' q' clipped at eps.
- js: Jensen–Shannon divergence, base 2, in [0, 1].
- g: G statistic of the multinomial goodness-of-fit test, 2 sum n ln(n / (N q')) = 2 N KL(p || q'),
  the log-likelihood ratio of "the window follows its own shares" against "it follows the
  reference". Under no drift it is asymptotically chi-square with K - 1 degrees of freedom.
- g_zscore: g mapped to a standard-normal score with the Wilson–Hilferty cube-root transform,
  z = ((g / d)^(1/3) - (1 - 2 / (9 d))) / sqrt(2 / (9 d)), d = K - 1, so that one threshold holds
  for any number of emotions (z > 4.75 ⇔ p-value < ~1e-6; the transform is slightly conservative
  at d = 3: see `g_threshold`). PromQL has no chi-square quantile, hence the transform.

A statistic exists only when the window is large enough for the chi-square approximation: at
least `MIN_EXPECTED` (5) predictions expected in the rarest reference class, N * qmin >= 5
(in-process: NaN gauges; Prometheus: no recorded sample).

The window is a time window (default 10 minutes, the recording rules' `increase(...[10m])`):
`DriftWindow` keeps per-slot counts in a ring of `slots` time slots, so adding a prediction is O(1)
and the statistics cost O(K) at scrape time.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

DEFAULT_WINDOW = "10m"
DEFAULT_SLOTS = 120          # time slots of the in-process window (5 s each for 10 minutes)
EPSILON = 1e-4               # clip of empty shares in psi and g
TINY = 1e-12                 # keeps 0 * ln(0) at 0
MIN_EXPECTED = 5.0           # predictions expected in the rarest reference class before any statistic

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(value: object, name: str = "duration") -> float:
    """Seconds of a simple Prometheus duration such as "30s", "5m", "1h" (one unit)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", str(value))
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{name} must be a positive Prometheus duration like 30s, 5m, 1h; got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


# ---------------------------------------------------------------------------------------------
# the expression language: one tree, two renderings
# ---------------------------------------------------------------------------------------------

SCALAR, MODEL, CLASS = 0, 1, 2  # level of a value: constant, per (model, version), per emotion too
_LABELS = {MODEL: "model, version", CLASS: "model, version, emotion"}


@dataclass(frozen=True)
class Expr:
    """A node of a drift formula: a variable, a constant, an arithmetic operation or a function."""

    op: str
    args: tuple = ()
    level: int = SCALAR

    def __add__(self, other): return _binary("+", self, other)
    def __radd__(self, other): return _binary("+", other, self)
    def __sub__(self, other): return _binary("-", self, other)
    def __rsub__(self, other): return _binary("-", other, self)
    def __mul__(self, other): return _binary("*", self, other)
    def __rmul__(self, other): return _binary("*", other, self)
    def __truediv__(self, other): return _binary("/", self, other)
    def __rtruediv__(self, other): return _binary("/", other, self)
    def __pow__(self, other): return _binary("^", self, other)

    # -- Python (numpy) --------------------------------------------------------------------
    def value(self, env: Mapping[str, np.ndarray]) -> np.ndarray:
        """Evaluate on arrays with PromQL's float semantics (IEEE: x/0 = ±Inf, 0/0 = NaN, ln 0 = -Inf).

        Emotion-level variables have the emotions on the last axis, (model, version)-level ones
        a last axis of length 1, so a batch of windows (leading axes) evaluates at once."""
        op, a = self.op, self.args
        if op == "const":
            return np.float64(a[0])
        if op == "var":
            return env[a[0]]
        with np.errstate(all="ignore"):
            if op == "sum":
                return np.sum(a[0].value(env), axis=-1, keepdims=True)
            if op in _FUNCS:
                return _FUNCS[op][0](a[0].value(env), *a[1:])
            return _ARITH[op](a[0].value(env), a[1].value(env))

    # -- PromQL ----------------------------------------------------------------------------
    def promql(self, names: Mapping[str, str]) -> str:
        """PromQL of this formula; `names` maps each variable to a series (a recording rule)."""
        op, a = self.op, self.args
        if op == "const":
            return _num(a[0])
        if op == "var":
            return names[a[0]]
        if op == "sum":
            return f"sum by ({_LABELS[MODEL]}) ({a[0].promql(names)})"
        if op in _FUNCS:
            extra = "".join(f", {_num(x)}" for x in a[1:])
            return f"{_FUNCS[op][1]}({a[0].promql(names)}{extra})"
        left, right = a
        lhs, rhs = left.promql(names), right.promql(names)
        if left.level == SCALAR or right.level == SCALAR:
            match = ""
        elif left.level == right.level:
            match = f" on ({_LABELS[left.level]})"
        else:  # emotion-level against model-level: many-to-one on (model, version)
            side = "group_left" if left.level > right.level else "group_right"
            match = f" on ({_LABELS[MODEL]}) {side} ()"
        return f"({lhs} {op}{match} {rhs})"


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) or abs(x) >= 1e15 else str(int(x))


_ARITH: dict[str, Callable] = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power}
_FUNCS: dict[str, tuple[Callable, str]] = {
    "ln": (np.log, "ln"), "log2": (np.log2, "log2"), "sqrt": (np.sqrt, "sqrt"), "clamp_min": (np.maximum, "clamp_min"),
}


def _lift(x) -> Expr:
    return x if isinstance(x, Expr) else Expr("const", (float(x),))


def _binary(op: str, a, b) -> Expr:
    a, b = _lift(a), _lift(b)
    if a.op == "const" and b.op == "const":
        with np.errstate(all="ignore"):
            return Expr("const", (float(_ARITH[op](np.float64(a.args[0]), np.float64(b.args[0]))),))
    return Expr(op, (a, b), max(a.level, b.level))


def _func(op: str, x, *params: float) -> Expr:
    x = _lift(x)
    if x.op == "const":
        with np.errstate(all="ignore"):
            return Expr("const", (float(_FUNCS[op][0](np.float64(x.args[0]), *params)),))
    return Expr(op, (x, *params), x.level)


def ln(x) -> Expr: return _func("ln", x)
def log2(x) -> Expr: return _func("log2", x)
def sqrt(x) -> Expr: return _func("sqrt", x)
def clamp_min(x, lo: float) -> Expr: return _func("clamp_min", x, float(lo))


def total(x: Expr) -> Expr:
    """Sum over the emotions of an emotion-level expression."""
    if x.level != CLASS:
        raise ValueError("total() sums an emotion-level expression")
    return Expr("sum", (x,), MODEL)


n = Expr("var", ("n",), CLASS)
q = Expr("var", ("q",), CLASS)
N = Expr("var", ("N",), MODEL)
K = Expr("var", ("K",), MODEL)
qmin = Expr("var", ("qmin",), MODEL)
VARIABLES = ("n", "q", "N", "K", "qmin")


@dataclass(frozen=True)
class Statistic:
    name: str
    formula: Expr
    help: str

    @property
    def per_emotion(self) -> bool:
        return self.formula.level == CLASS

    @property
    def var(self) -> Expr:
        """This statistic as a variable of later formulas (PromQL: its recording rule)."""
        return Expr("var", (self.name,), self.formula.level)


def _statistics() -> tuple[Statistic, ...]:
    share = Statistic("share", n / N, "Share of the emotion among the window's predictions")
    p = share.var
    pc, qc = clamp_min(p, EPSILON), clamp_min(q, EPSILON)
    m = clamp_min((p + q) / 2, TINY)
    g = Statistic("g", 2 * total(n * ln(clamp_min(n, TINY) / (N * qc))),
                  "G statistic (2 x log-likelihood ratio) of the window counts vs reference shares")
    d = K - 1
    zscore = ((clamp_min(g.var / d, 0) ** (1 / 3)) - (1 - 2 / (9 * d))) / sqrt(2 / (9 * d))
    return (
        share,
        Statistic("share_delta", p - q, "Share of the emotion minus its reference share"),
        Statistic("psi", total((pc - qc) * ln(pc / qc)), "Population stability index of the window vs reference"),
        Statistic("js", total(0.5 * p * log2(clamp_min(p, TINY) / m) + 0.5 * q * log2(clamp_min(q, TINY) / m)),
                  "Jensen-Shannon divergence (base 2) of the window vs reference"),
        g,
        Statistic("g_zscore", zscore,
                  "G statistic as a standard-normal score (Wilson-Hilferty, K-1 degrees of freedom)"),
    )


STATISTICS = _statistics()
BY_NAME = {s.name: s for s in STATISTICS}
ENOUGH = N * qmin  # a statistic exists when ENOUGH >= MIN_EXPECTED


def g_threshold(z: float, classes: int) -> float:
    """The G value whose g_zscore is `z` for `classes` emotions (inverse Wilson–Hilferty)."""
    d = classes - 1
    c = 2 / (9 * d)
    return d * max(0.0, 1 - c + z * math.sqrt(c)) ** 3


# ---------------------------------------------------------------------------------------------
# evaluation from counts
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DriftStats:
    """Drift statistics of one window against the reference: `values[name]` for each statistic
    of STATISTICS (a float, or {emotion: float} for per-emotion ones)."""

    count: int
    values: dict[str, float | dict[str, float]]

    def value(self, name: str, emotion: str | None = None) -> float:
        v = self.values[name]
        return v[emotion] if isinstance(v, dict) else v  # type: ignore[index]

    psi = property(lambda self: self.values["psi"])
    js = property(lambda self: self.values["js"])
    g = property(lambda self: self.values["g"])
    g_zscore = property(lambda self: self.values["g_zscore"])
    shares = property(lambda self: self.values["share"])
    share_delta = property(lambda self: self.values["share_delta"])


def validate_shares(shares: Mapping[str, float], *, tolerance: float = 1e-3) -> dict[str, float]:
    """Check a reference distribution {label: share} and return it as a plain dict of floats.

    Shares must be finite, ≥ 0, at least two labels, summing to 1 within `tolerance`
    (they are then renormalised exactly). Raises ValueError naming the bad item.
    """
    if not isinstance(shares, Mapping):
        raise ValueError(f"reference shares must be a mapping label -> share, got {type(shares).__name__}")
    if len(shares) < 2:
        raise ValueError(f"reference shares need at least two labels, got {list(shares)}")
    out: dict[str, float] = {}
    for label, share in shares.items():
        if not isinstance(label, str) or not label:
            raise ValueError(f"reference label must be a non-empty string, got {label!r}")
        try:
            value = float(share)
        except (TypeError, ValueError):
            raise ValueError(f"reference share of {label!r} is not a number: {share!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"reference share of {label!r} must be finite and >= 0, got {share!r}")
        out[label] = value
    total_share = sum(out.values())
    if abs(total_share - 1.0) > tolerance:
        raise ValueError(f"reference shares must sum to 1 (±{tolerance}), got {total_share:.6f}: {out}")
    return {k: v / total_share for k, v in out.items()}


def min_count(shares: Mapping[str, float]) -> int:
    """Smallest window count N with N * qmin >= MIN_EXPECTED (zero shares ignored)."""
    positive = [s for s in shares.values() if s > 0]
    if not positive:
        raise ValueError("reference shares are all zero")
    return int(math.ceil(round(MIN_EXPECTED / min(positive), 9)))  # round(): 5 / 0.25 = 20.000000000000004


def compute(counts: Mapping[str, float], reference: Mapping[str, float]) -> DriftStats | None:
    """Every statistic of window `counts` {emotion: n} against `reference` {emotion: q}, or None
    when the window is too small (N * qmin < MIN_EXPECTED). Emotions of the reference missing from
    `counts` count 0; an emotion outside the reference raises ValueError."""
    extra = set(counts) - set(reference)
    if extra:
        raise ValueError(f"counts for emotions outside the reference {sorted(reference)}: {sorted(extra)}")
    labels = list(reference)
    values = compute_batch(np.array([[float(counts.get(k, 0)) for k in labels]]), [reference[k] for k in labels])
    if not values["enough"][0]:
        return None
    return DriftStats(count=int(values["N"][0]), values={
        stat.name: dict(zip(labels, values[stat.name][0].tolist())) if stat.per_emotion else float(values[stat.name][0])
        for stat in STATISTICS})


def compute_batch(counts: np.ndarray, reference: "list[float] | np.ndarray") -> dict[str, np.ndarray]:
    """Every statistic for a batch of windows: counts of shape (windows, emotions) in the order of
    `reference` (shares). Returns {statistic: array (windows,) or (windows, emotions)}, plus "N"
    and "enough" (N * qmin >= MIN_EXPECTED); statistics of windows not enough are computed anyway."""
    q = np.asarray(reference, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    env: dict[str, np.ndarray] = {"n": n, "q": q, "N": n.sum(axis=-1, keepdims=True),
                                  "K": np.float64(q.shape[-1]), "qmin": np.min(q[q > 0])}
    for stat in STATISTICS:  # in order: a formula may read the statistics above it
        env[stat.name] = np.broadcast_to(stat.formula.value(env), n.shape if stat.per_emotion else env["N"].shape)
    out = {stat.name: env[stat.name] if stat.per_emotion else env[stat.name][..., 0] for stat in STATISTICS}
    out["N"] = env["N"][..., 0]
    out["enough"] = ENOUGH.value(env)[..., 0] >= MIN_EXPECTED
    return out


def promql(stat: Statistic | Expr, names: Mapping[str, str]) -> str:
    """PromQL of a statistic (or formula), each variable (VARIABLES, and the statistics above it
    in STATISTICS) read from the series `names[var]`."""
    formula = stat.formula if isinstance(stat, Statistic) else stat
    missing = _variables(formula) - set(names)
    if missing:
        raise ValueError(f"no series named for variables {sorted(missing)}")
    return formula.promql(names)


def _variables(e: Expr) -> set[str]:
    if e.op == "var":
        return {e.args[0]}
    return set().union(*(_variables(a) for a in e.args if isinstance(a, Expr)))


# ---------------------------------------------------------------------------------------------
# the in-process window
# ---------------------------------------------------------------------------------------------

class DriftWindow:
    """Counts of predicted labels over the last `window` (a Prometheus duration or seconds).

    The window is a ring of `slots` time slots (each window / slots long): add(label) is O(1) and
    thread-safe; counts() and stats() cover the slots of the last `window`. `clock` gives seconds
    (time.monotonic by default; tests pass their own). Unknown labels raise ValueError.
    """

    def __init__(self, reference: Mapping[str, float], window: str | float = DEFAULT_WINDOW, *,
                 slots: int = DEFAULT_SLOTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.reference = validate_shares(reference)
        self.labels = list(self.reference)
        self.window_s = _window_seconds(window)
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"drift window slots must be a positive integer, got {slots!r}")
        self.slots = slots
        self.slot_s = self.window_s / slots
        self.min_count = min_count(self.reference)
        self._clock = clock
        self._index = {k: i for i, k in enumerate(self.labels)}
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Empty the window."""
        with self._lock:
            self._ring = [[0] * len(self.labels) for _ in range(self.slots)]
            self._totals = [0] * len(self.labels)
            self._slot = math.floor(self._clock() / self.slot_s)
            self.version = getattr(self, "version", 0) + 1  # changes whenever the counts may change

    def _advance(self, now: int | None = None) -> None:
        """Move the ring to the time slot `now` (default: the clock's), emptying the slots passed."""
        if now is None:
            now = math.floor(self._clock() / self.slot_s)
        if now <= self._slot:
            return
        for s in range(1, min(now - self._slot, self.slots) + 1):
            old = self._ring[(self._slot + s) % self.slots]
            if any(old):
                for i, c in enumerate(old):
                    self._totals[i] -= c
                    old[i] = 0
        self._slot = now
        self.version += 1

    def add(self, label: str) -> None:
        """Count one predicted label at the current time (O(1) amortised)."""
        try:
            idx = self._index[label]
        except (KeyError, TypeError):
            raise ValueError(
                f"predicted label {label!r} is not in the reference distribution {self.labels}"
            ) from None
        now = math.floor(self._clock() / self.slot_s)
        with self._lock:
            if now != self._slot:
                self._advance(now)
            self._ring[self._slot % self.slots][idx] += 1
            self._totals[idx] += 1
            self.version += 1

    def counts(self) -> dict[str, int]:
        """Per-label counts of the window."""
        with self._lock:
            self._advance()
            return dict(zip(self.labels, self._totals))

    def state(self) -> tuple[int, int]:
        """Changes whenever the window's counts may have changed (a cache key for stats())."""
        return self.version, math.floor(self._clock() / self.slot_s)

    @property
    def count(self) -> int:
        """Predictions in the window."""
        return sum(self.counts().values())

    def stats(self) -> DriftStats | None:
        """Every statistic of the window (see STATISTICS), or None below the minimum count."""
        return compute(self.counts(), self.reference)


def _window_seconds(window: str | float) -> float:
    if isinstance(window, str):
        return duration_seconds(window, "drift window")
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not math.isfinite(window) or window <= 0:
        raise ValueError(f"drift window must be a Prometheus duration (e.g. 10m) or seconds > 0, got {window!r}")
    return float(window)
