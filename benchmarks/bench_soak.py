"""R3: soak the predictor with 50 concurrent clients; zero errors and bounded memory growth.

A tiny A1 model (random init) is registered in a temporary store and served by
``start_local_server`` on 127.0.0.1. `--clients` closed-loop clients (asyncio + httpx, keep-alive)
send a mix for `--warmup` + `--duration` seconds: V1 and v2 requests, 0.5-3 s WAV/FLAC clips,
with and without text, 1-3 instances, and 10 % malformed requests that must get a 4xx. An error
is a transport error, a 5xx, or any status other than the one expected. The server's resident
memory (psutil) is read after the warm-up and at the end (and sampled every second); growth =
end / after-warm-up - 1 (target < 10 %).

    python benchmarks/bench_soak.py [--clients 50] [--duration 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EMOFLOW_HOME", str(REPO / ".emoflow"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

V1 = "/v1/models/emoflow:predict"
V2 = "/v2/models/emoflow/infer"
TEXTS = ["I can't believe it", "that is wonderful news", "leave me alone", "ok", "😀 great 🎉", None]


def clips(seed: int = 0) -> list[str]:
    """Base64 clips of 0.5-3 s, WAV and FLAC."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    out = []
    for i, seconds in enumerate([0.5, 1.0, 1.5, 2.0, 3.0]):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.2 * np.sin(2 * np.pi * (120 + 40 * i) * t) + 0.02 * rng.normal(size=t.shape)
        for fmt in ("WAV", "FLAC"):
            buf = io.BytesIO()
            sf.write(buf, wave.astype(np.float32), 16000, format=fmt)
            out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def make_request(rng: random.Random, audio: list[str]) -> tuple[str, dict, int]:
    """(path, JSON body, expected status)."""
    n = rng.choice([1, 1, 1, 2, 3])
    if rng.random() < 0.10:  # malformed on purpose: must be a 4xx, never an error
        bad = rng.choice([
            (V1, {"instances": [{"audio": "not base64 !!"}]}),
            (V1, {"instances": [{"audio": base64.b64encode(b"noise" * 40).decode()}]}),
            (V1, {"instances": []}),
            (V2, {"inputs": [{"name": "audio", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
            (V2, {"inputs": [{"name": "audio", "shape": [5], "datatype": "BYTES", "data": [audio[0]]}]}),
        ])
        return bad[0], bad[1], 400
    picks = [rng.choice(audio) for _ in range(n)]
    texts = [rng.choice(TEXTS) for _ in range(n)]
    if rng.random() < 0.5:
        insts = [{"audio": a, **({"text": t} if t is not None else {})} for a, t in zip(picks, texts)]
        return V1, {"instances": insts}, 200
    inputs = [{"name": "audio", "shape": [n], "datatype": "BYTES", "data": picks}]
    if rng.random() < 0.7:
        inputs.append({"name": "text", "shape": [n], "datatype": "BYTES", "data": [t or "" for t in texts]})
    return V2, {"inputs": inputs}, 200


async def soak(url: str, clients: int, seconds: float, seed: int, stats: dict) -> None:
    import httpx

    audio = clips(seed)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(k: int):
            rng = random.Random(seed * 1000 + k)
            while time.perf_counter() < stop:
                path, body, expected = make_request(rng, audio)
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status, r = f"{type(exc).__name__}", None
                stats["latency"].append(time.perf_counter() - t0)
                stats["status"][status] += 1
                ok = status == expected if expected == 200 else isinstance(status, int) and 400 <= status < 500
                if not ok:
                    stats["errors"].append(f"{path} expected {expected}, got {status}: {r.text[:200] if r else ''}")

        await asyncio.gather(*(worker(k) for k in range(clients)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds after the warm-up")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import psutil
    from bench_serving import _free_port, register
    from emoflow.serving.local import reap_in_background, start_local_server, stop_local_server

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        store = register(Path(tmp), "tiny")
        port = _free_port()
        url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port)
        pid = int((Path(os.environ["EMOFLOW_HOME"]) / "serve" / f"{port}.pid").read_text())
        reap_in_background(pid)
        proc = psutil.Process(pid)
        rss_samples: list[tuple[float, int]] = []

        async def sampler(stop_at: float):
            while time.perf_counter() < stop_at:
                rss_samples.append((time.perf_counter(), proc.memory_info().rss))
                await asyncio.sleep(1.0)

        try:
            warm = {"latency": [], "status": Counter(), "errors": []}
            asyncio.run(soak(url, args.clients, args.warmup, args.seed + 1, warm))
            rss_start = proc.memory_info().rss
            stats = {"latency": [], "status": Counter(), "errors": []}

            async def measured():
                await asyncio.gather(soak(url, args.clients, args.duration, args.seed, stats),
                                     sampler(time.perf_counter() + args.duration))

            t0 = time.perf_counter()
            asyncio.run(measured())
            wall = time.perf_counter() - t0
            rss_end = proc.memory_info().rss
            import httpx

            ready = httpx.get(f"{url}/v2/health/ready", timeout=10).status_code
        finally:
            stop_local_server(port)

    lat = np.asarray(stats["latency"]) * 1000
    n = len(lat)
    growth = rss_end / rss_start - 1
    peak = max(r for _, r in rss_samples) if rss_samples else rss_end
    print(f"R3 soak: {args.clients} clients, {args.duration:g} s after {args.warmup:g} s warm-up "
          f"(warm-up errors {len(warm['errors'])}), load average {os.getloadavg()[0]:.1f}")
    print(f"  requests {n} ({n / wall:.1f}/s), statuses "
          + ", ".join(f"{k}: {v}" for k, v in sorted(stats["status"].items(), key=str)))
    print(f"  latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms")
    print(f"  errors {len(stats['errors']) + len(warm['errors'])}; ready after: {ready}")
    print(f"  server RSS after warm-up {rss_start / 2**20:.1f} MiB, end {rss_end / 2**20:.1f} MiB, "
          f"peak {peak / 2**20:.1f} MiB, growth {100 * growth:+.2f} % (target < 10 %)")
    for e in (warm["errors"] + stats["errors"])[:10]:
        print("  ERROR", e)
    ok = not stats["errors"] and not warm["errors"] and growth < 0.10 and ready == 200
    print("R3", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
