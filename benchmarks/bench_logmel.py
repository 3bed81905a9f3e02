"""P1: log-mel throughput of emoflow's fast path vs a per-clip librosa loop, and the value error.

Baseline: for each clip ``librosa.load(path, sr=16000)`` + ``librosa.feature.melspectrogram``
(+ log). Fast path: ``emoflow.audio.features.iter_logmel`` (soundfile decoding in two threads,
batched ``torch.stft``, librosa's mel filterbank), the code the feature step runs. Same
parameters on both sides (128 mels, 400-sample Hann window, 160 hop, n_fft 512, centred,
zero padded, power 2). Errors are per clip: relative Frobenius error of the mel power
spectrogram and of the log-mel, maximum over clips; plus the largest absolute log-mel gap.

    python benchmarks/bench_logmel.py [--clips 200] [--data ../shared/data/ravdess]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EMOFLOW_HOME", str(REPO / ".emoflow"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(os.environ["EMOFLOW_HOME"]) / "numba"))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ravdess"))
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    root = Path(args.data)
    files = sorted(p for p in root.glob("Actor_*/*") if p.suffix in (".wav", ".flac")) if root.is_dir() else []
    if not files:
        print(f"SKIP bench_logmel: no RAVDESS clips under {root}")
        return 0
    step = max(1, len(files) // args.clips)  # spread over actors
    files = files[::step][: args.clips]

    import librosa
    from emoflow.audio.features import iter_logmel
    from emoflow.audio.logmel import LogMelConfig

    cfg = LogMelConfig(normalize="none")
    params = dict(sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                  window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels,
                  fmin=cfg.fmin, fmax=cfg.fmax)

    # warm both paths (librosa JIT-compiles on first use; torch allocates its first buffers)
    y, _ = librosa.load(files[0], sr=cfg.sample_rate)
    librosa.feature.melspectrogram(y=y, **params)
    list(iter_logmel([str(f) for f in files[:4]], cfg))

    def run_librosa():
        out = []
        for f in files:
            y, _ = librosa.load(f, sr=cfg.sample_rate)
            mel = librosa.feature.melspectrogram(y=y, **params)
            out.append((mel, np.log(np.maximum(mel, cfg.log_floor))))
        return out

    def run_fast():
        out = [None] * len(files)
        for i, res in iter_logmel([str(f) for f in files], cfg, batch_size=args.batch_size):
            if isinstance(res, Exception):
                raise res
            out[i] = res
        return out

    # alternate the two, best of --repeats each: other load on a shared machine hits both sides
    t_lib = t_fast = float("inf")
    for _ in range(args.repeats):
        time.sleep(0.5)  # let the other side's idle BLAS/OpenMP threads stop spinning
        t0 = time.perf_counter()
        ref = run_librosa()
        t_lib = min(t_lib, time.perf_counter() - t0)
        time.sleep(0.5)
        t0 = time.perf_counter()
        fast = run_fast()
        t_fast = min(t_fast, time.perf_counter() - t0)

    rel_mel = rel_log = max_abs = 0.0
    for (mel, log_ref), feats in zip(ref, fast):
        assert feats.shape == log_ref.T.shape, (feats.shape, log_ref.shape)
        ours_mel = np.exp(feats.T.astype(np.float64))
        # power error where above the floor (the floor clips both sides identically)
        keep = mel > cfg.log_floor
        rel_mel = max(rel_mel, np.linalg.norm((ours_mel - mel)[keep]) / np.linalg.norm(mel[keep]))
        rel_log = max(rel_log, np.linalg.norm(feats.T - log_ref) / np.linalg.norm(log_ref))
        max_abs = max(max_abs, float(np.abs(feats.T - log_ref).max()))

    n = len(files)
    ratio = t_lib / t_fast
    print(f"P1 log-mel on {n} RAVDESS clips ({root}), {len(os.sched_getaffinity(0))} CPUs, "
          f"best of {args.repeats} alternating runs")
    print(f"  librosa loop : {t_lib:7.2f} s  {n / t_lib:8.1f} clips/s")
    print(f"  emoflow fast : {t_fast:7.2f} s  {n / t_fast:8.1f} clips/s")
    print(f"  speed-up     : {ratio:.1f}x  (target >= 5x)")
    print(f"  rel. error   : mel power {rel_mel:.2e}, log-mel {rel_log:.2e} (target <= 1e-3); "
          f"max |log-mel diff| {max_abs:.2e} nats")
    ok = ratio >= 5 and rel_mel <= 1e-3 and rel_log <= 1e-3
    print("P1 PASS" if ok else "P1 FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
