"""In-process drift of the predicted-emotion distribution over a sliding window.

`DriftWindow` keeps the last N predicted labels (a ring buffer plus one count per class), so
adding a prediction costs O(1): one slot overwritten, two counts changed. The statistics are
computed from the counts on demand (O(K) for K classes, pure Python, a few µs for K ≤ 10):

- PSI (population stability index), natural log:
      PSI = sum_i (p_i - q_i) * ln(p_i / q_i)
  with p = window shares, q = reference shares, each clipped below at `epsilon` so an empty bin
  gives a large but finite term.
- Jensen–Shannon divergence, base 2 (so it lies in [0, 1]), no smoothing needed:
      JS = 1/2 KL(p || m) + 1/2 KL(q || m),  m = (p + q) / 2
- Chi-square goodness of fit of the window counts against n * q (q clipped at `epsilon` and
  renormalised), K - 1 degrees of freedom; p-value = chi2 survival function
  (`scipy.special.chdtrc`).

Nothing is reported (`stats()` returns None) until the window holds `min_count` predictions;
the default is ceil(5 / smallest positive reference share), i.e. at least 5 expected per class,
the usual validity condition of the chi-square test.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Mapping

from scipy.special import chdtrc

DEFAULT_WINDOW = 500
DEFAULT_EPSILON = 1e-4


@dataclass(frozen=True)
class DriftStats:
    """Drift statistics of one window against the reference."""

    count: int
    psi: float
    js: float
    chi2: float
    chi2_pvalue: float
    shares: dict[str, float]


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
    total = sum(out.values())
    if abs(total - 1.0) > tolerance:
        raise ValueError(f"reference shares must sum to 1 (±{tolerance}), got {total:.6f}: {out}")
    return {k: v / total for k, v in out.items()}


def default_min_count(shares: Mapping[str, float], expected_per_class: float = 5.0) -> int:
    """Smallest window count giving ≥ `expected_per_class` expected predictions in every class
    with a positive reference share: ceil(expected / min positive share)."""
    positive = [s for s in shares.values() if s > 0]
    if not positive:
        raise ValueError("reference shares are all zero")
    # round() guards against 5 / 0.25 = 20.000000000000004 style float noise
    return int(math.ceil(round(expected_per_class / min(positive), 9)))


def psi(p: list[float], q: list[float], epsilon: float = DEFAULT_EPSILON) -> float:
    """Population stability index of shares p against reference q (natural log, clipped at epsilon)."""
    total = 0.0
    for pi, qi in zip(p, q):
        pi = pi if pi > epsilon else epsilon
        qi = qi if qi > epsilon else epsilon
        total += (pi - qi) * math.log(pi / qi)
    return total


def js_divergence(p: list[float], q: list[float]) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two share vectors."""
    total = 0.0
    for pi, qi in zip(p, q):
        mi = 0.5 * (pi + qi)
        if pi > 0:
            total += 0.5 * pi * math.log2(pi / mi)
        if qi > 0:
            total += 0.5 * qi * math.log2(qi / mi)
    return max(total, 0.0)


def chi2_gof(counts: list[int], q: list[float], epsilon: float = DEFAULT_EPSILON) -> tuple[float, float]:
    """Chi-square goodness of fit of `counts` against reference shares q -> (statistic, p-value)."""
    n = sum(counts)
    qs = [qi if qi > epsilon else epsilon for qi in q]
    norm = sum(qs)
    stat = 0.0
    for c, qi in zip(counts, qs):
        expected = n * qi / norm
        stat += (c - expected) ** 2 / expected
    return stat, float(chdtrc(len(counts) - 1, stat))


class DriftWindow:
    """Sliding window of the last `window` predicted labels compared with reference shares.

    add(label) is O(1) and thread-safe; stats() returns DriftStats or None while the window
    holds fewer than `min_count` predictions. Unknown labels raise ValueError.
    """

    def __init__(
        self,
        reference: Mapping[str, float],
        window: int = DEFAULT_WINDOW,
        min_count: int | None = None,
        epsilon: float = DEFAULT_EPSILON,
    ) -> None:
        self.reference = validate_shares(reference)
        self.labels = list(self.reference)
        self._q = [self.reference[k] for k in self.labels]
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"drift window must be an integer >= 2, got {window!r}")
        if min_count is None:
            min_count = default_min_count(self.reference)
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"drift min_count must be a positive integer, got {min_count!r}")
        if min_count > window:
            raise ValueError(
                f"drift min_count {min_count} exceeds the window size {window}: drift would never be "
                "reported; enlarge the window or lower min_count"
            )
        if not (0 < epsilon < 1):
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
        self.window = window
        self.min_count = min_count
        self.epsilon = epsilon
        self._index = {k: i for i, k in enumerate(self.labels)}
        self._ring = [-1] * window  # class index per slot, -1 = empty
        self._pos = 0
        self._n = 0
        self._counts = [0] * len(self.labels)
        self.total_added = 0  # ever added (changes whenever the window changes)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Number of predictions currently in the window."""
        return self._n

    def counts(self) -> dict[str, int]:
        """Current per-label counts in the window."""
        with self._lock:
            return dict(zip(self.labels, self._counts))

    def add(self, label: str) -> None:
        """Add one predicted label, evicting the oldest once the window is full."""
        try:
            idx = self._index[label]
        except (KeyError, TypeError):
            raise ValueError(
                f"predicted label {label!r} is not in the reference distribution {self.labels}"
            ) from None
        with self._lock:
            old = self._ring[self._pos]
            if old >= 0:
                self._counts[old] -= 1
            else:
                self._n += 1
            self._ring[self._pos] = idx
            self._counts[idx] += 1
            self._pos += 1
            if self._pos == self.window:
                self._pos = 0
            self.total_added += 1

    def reset(self) -> None:
        """Empty the window."""
        with self._lock:
            self._ring = [-1] * self.window
            self._pos = 0
            self._n = 0
            self._counts = [0] * len(self.labels)
            self.total_added += 1

    def stats(self) -> DriftStats | None:
        """PSI, JS divergence and chi-square p-value of the window, or None below min_count."""
        with self._lock:
            n = self._n
            counts = list(self._counts)
        if n < self.min_count:
            return None
        p = [c / n for c in counts]
        stat, pvalue = chi2_gof(counts, self._q, self.epsilon)
        return DriftStats(
            count=n,
            psi=psi(p, self._q, self.epsilon),
            js=js_divergence(p, self._q),
            chi2=stat,
            chi2_pvalue=pvalue,
            shares=dict(zip(self.labels, p)),
        )
