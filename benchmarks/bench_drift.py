"""P5: in-process drift detection — delay, false alarms and update cost.

Run:  python benchmarks/bench_drift.py [--window 500] [--alpha 1e-4] [--psi 0.1] [--seeds 41]

Set-up: predictions are drawn i.i.d. from a reference distribution (4-class IEMOCAP-like and
8-class RAVDESS-like). The detector is emoflow.monitoring.drift.DriftWindow evaluated after every
prediction; an alarm is "chi-square p-value < alpha" (the in-process gauge
emoflow_drift_chi2_pvalue) and, reported beside it, "PSI > threshold" (emoflow_drift_psi).

- Delay: after 2 × window stationary predictions, one emotion's share is raised by 20 points
  (the others scaled down proportionally); delay = shifted predictions until the alarm first
  holds. Median over seeds, for every emotion in turn; the worst emotion is reported.
- False alarms: rising edges of the alarm per 10,000 stationary predictions (window full).
- Update cost: µs per PredictionMetrics.observe (counter + histogram + modality + window) and
  per DriftWindow.add, on a private registry.

Targets (issue 8, P5): delay ≤ 300 predictions, ≤ 1 false alarm / 10,000, ≤ 20 µs per update.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from prometheus_client import CollectorRegistry

from emoflow.monitoring.drift import DriftWindow
from emoflow.monitoring.metrics import PredictionMetrics

REFERENCES = {
    "4-class (IEMOCAP-like)": {"neutral": 0.31, "happy": 0.30, "sad": 0.20, "angry": 0.19},
    "8-class (RAVDESS-like)": {
        "neutral": 1 / 15, "calm": 2 / 15, "happy": 2 / 15, "sad": 2 / 15,
        "angry": 2 / 15, "fearful": 2 / 15, "disgust": 2 / 15, "surprised": 2 / 15,
    },
}


def shifted(ref: dict[str, float], emotion: str, points: float = 0.20) -> dict[str, float]:
    """Raise `emotion`'s share by `points`, scaling the other shares down proportionally."""
    rest = 1.0 - ref[emotion]
    return {k: (v + points if k == emotion else v * (rest - points) / rest) for k, v in ref.items()}


def alarm(win: DriftWindow, alpha: float, psi_threshold: float) -> tuple[bool, bool]:
    s = win.stats()
    if s is None:
        return False, False
    return s.chi2_pvalue < alpha, s.psi > psi_threshold


def draw(rng: np.random.Generator, labels: list[str], shares: dict[str, float], n: int) -> list[str]:
    p = np.array([shares[k] for k in labels])
    return [labels[i] for i in rng.choice(len(labels), size=n, p=p / p.sum())]


def delays(ref, emotion, window, alpha, psi_threshold, seeds, limit=3000):
    """Median delay (chi2, psi) in predictions over seeds; limit when never detected."""
    labels = list(ref)
    out_chi, out_psi = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        win = DriftWindow(ref, window=window)
        for lab in draw(rng, labels, ref, 2 * window):
            win.add(lab)
        stream = draw(rng, labels, shifted(ref, emotion), limit)
        got_chi = got_psi = None
        for i, lab in enumerate(stream, 1):
            win.add(lab)
            a_chi, a_psi = alarm(win, alpha, psi_threshold)
            if a_chi and got_chi is None:
                got_chi = i
            if a_psi and got_psi is None:
                got_psi = i
            if got_chi is not None and got_psi is not None:
                break
        out_chi.append(got_chi or limit)
        out_psi.append(got_psi or limit)
    return statistics.median(out_chi), statistics.median(out_psi)


def false_alarms(ref, window, alpha, psi_threshold, n, seed=1234):
    """Rising edges of each alarm over n stationary predictions (window full first)."""
    labels = list(ref)
    rng = np.random.default_rng(seed)
    win = DriftWindow(ref, window=window)
    for lab in draw(rng, labels, ref, window):
        win.add(lab)
    edges_chi = edges_psi = 0
    prev_chi = prev_psi = False
    for lab in draw(rng, labels, ref, n):
        win.add(lab)
        a_chi, a_psi = alarm(win, alpha, psi_threshold)
        edges_chi += a_chi and not prev_chi
        edges_psi += a_psi and not prev_psi
        prev_chi, prev_psi = a_chi, a_psi
    return edges_chi, edges_psi


def update_cost(window: int, n: int = 200_000) -> tuple[float, float]:
    ref = REFERENCES["8-class (RAVDESS-like)"]
    labels = list(ref)
    m = PredictionMetrics(CollectorRegistry(), window=window)
    m.set_reference("bench", "v1", ref)
    seq = [labels[i % len(labels)] for i in range(1024)]
    t = time.perf_counter()
    for i in range(n):
        m.observe("bench", "v1", seq[i & 1023], 0.8, "audio+text")
    per_observe = (time.perf_counter() - t) / n * 1e6
    win = DriftWindow(ref, window=window)
    t = time.perf_counter()
    for i in range(n):
        win.add(seq[i & 1023])
    per_add = (time.perf_counter() - t) / n * 1e6
    return per_observe, per_add


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=1e-4, help="chi-square p-value alarm level")
    ap.add_argument("--psi", type=float, default=0.1, help="PSI alarm threshold")
    ap.add_argument("--seeds", type=int, default=41)
    ap.add_argument("--stationary", type=int, default=100_000, help="stationary predictions per reference")
    args = ap.parse_args(argv)

    print(f"P5 drift benchmark: window={args.window}, alarm = p < {args.alpha:g} (chi2) | PSI > {args.psi:g}")
    ok = True
    for name, ref in REFERENCES.items():
        worst_chi = worst_psi = 0.0
        detail = []
        for emotion in ref:
            d_chi, d_psi = delays(ref, emotion, args.window, args.alpha, args.psi, args.seeds)
            worst_chi, worst_psi = max(worst_chi, d_chi), max(worst_psi, d_psi)
            detail.append(f"{emotion}={d_chi:g}/{d_psi:g}")
        fa_chi, fa_psi = false_alarms(ref, args.window, args.alpha, args.psi, args.stationary)
        per10k_chi = fa_chi * 10_000 / args.stationary
        per10k_psi = fa_psi * 10_000 / args.stationary
        print(f"\n{name}")
        print(f"  median delay of a +20-point shift (chi2/psi) per emotion: {', '.join(detail)}")
        print(f"  worst-emotion median delay: chi2 {worst_chi:g}, PSI {worst_psi:g} predictions (target <= 300)")
        print(f"  false alarms per 10,000 stationary predictions ({args.stationary} drawn): "
              f"chi2 {per10k_chi:.2f}, PSI {per10k_psi:.2f} (target <= 1)")
        ok &= worst_chi <= 300 and per10k_chi <= 1
    per_observe, per_add = update_cost(args.window)
    print(f"\nupdate cost: {per_observe:.2f} µs per PredictionMetrics.observe, "
          f"{per_add:.2f} µs per DriftWindow.add (target <= 20)")
    ok &= per_observe <= 20
    print("P5 (chi2 detector):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
