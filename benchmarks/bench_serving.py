"""P3: predictor throughput, latency and server overhead over real HTTP on 127.0.0.1 (CPU).

For each model (``--models``, randomly initialised: no hub weights offline) a model is registered
in a temporary store and served by ``start_local_server`` (the predictor process
``python -m emoflow.serving``):

- ``tiny``, ``paper``: A1 presets (log-mel CNN + BERT-style text encoder, random init);
- ``offline``: the A3 ``offline-speech`` preset's seed ensemble (5 members, mean probabilities) on
  speech-encoder embeddings computed online by the predictor, with the encoders the serving tests
  build offline (Whisper tiny.en layer statistics + two random-init wav2vec2 vector encoders,
  ``tests/serving/serving_helpers.EMB_ENCODERS``) in place of Whisper base + GE2E.

Then, with the same V1 request (one instance: a 2.5 s 16 kHz WAV and a short text):

- 1 client, then 8 concurrent clients (closed loop, keep-alive, asyncio + httpx, in a separate
  client process), each phase for ``--seconds`` after a warm-up: throughput (requests/s), latency
  p50/p99;
- in-process (interleaved with the HTTP phases): the same predictor code in this process (``parse`` = base64 + audio decode +
  log-mel, then ``_run_batch`` = collate + forward + softmax) on the same payload, one at a time.

Printed ratios, measured in one run: throughput 8 clients / 1 client (target >= 3), p99/p50 at
1 and 8 clients (target <= 2), server overhead = HTTP p50 at 1 client / in-process p50 - 1
(target <= 15 %). The machine load average is printed too: on a shared machine it matters.

    python benchmarks/bench_serving.py [--models paper,offline] [--seconds 4] [--rounds 2] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EMOFLOW_HOME", str(REPO / ".emoflow"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

LABELS = ["angry", "happy", "neutral", "sad"]
TEXT = "I really did not expect to see you here today"


def wav_payload(seconds: float = 2.5, sr: int = 16000, seed: int = 0) -> bytes:
    """A voiced-like test clip: harmonics with a moving pitch plus a little noise, as WAV bytes."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6)) + 0.01 * rng.normal(size=t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def register(root: Path, preset_name: str) -> str:
    """Register a randomly initialised A1 `preset_name` as emoflow@production; return the store URI."""
    from emoflow.models import build_model, load_preset, save_model
    from emoflow.registry import Registry
    from emoflow.storage import open_store

    preset = load_preset("a1", preset_name)
    preset["model"]["text_encoder"]["init"] = "random"  # offline: no pretrained BERT weights
    model = build_model("a1", preset, LABELS)
    src = root / "model-src" / "model"
    save_model(model, src)
    (src / "feature_config.json").write_text(json.dumps({"n_mels": preset["features"]["logmel"]["n_mels"]}))
    files = {f"model/{p.name}": p for p in src.iterdir()}
    store_uri = str(root / "store")
    registry = Registry(open_store(store_uri))
    version = registry.register("emoflow", files, {"arch": "a1", "preset": preset_name})
    registry.promote("emoflow", version, "production")
    return store_uri


def register_offline(root: Path) -> str:
    """Register the A3 offline-speech seed ensemble (random init) on the serving tests' offline
    encoders as emoflow@production; return the store URI. The model's input sizes come from the
    encoders' own output on a probe clip."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from serving.serving_helpers import EMB_ENCODERS

    from emoflow.audio.embeddings import speech_caches
    from emoflow.models import build_model, load_preset, save_model
    from emoflow.models.ensemble import SeedEnsemble
    from emoflow.registry import Registry
    from emoflow.storage import open_store
    from emoflow.training.data import assemble_embeddings

    fc = {"n_mels": 40, "encoders": EMB_ENCODERS, "embedding_options": {"stats": True, "store_frames": False}}
    caches = sorted((c.load() for c in speech_caches(fc, device="cpu", progress=False)), key=lambda c: c.key_hash)
    probe = np.random.default_rng(0).normal(0, 0.05, 16000).astype(np.float32)
    emb = assemble_embeddings([(c.key_hash, c.embed([probe])[0]) for c in caches])
    preset = load_preset("a3", "offline-speech")
    preset["model"]["speech_emb"].update(layers=int(emb["layers"].shape[0]), layer_dim=int(emb["layers"].shape[1]),
                                         vec_dim=int(emb["vec"].shape[0]))
    members = []
    for seed in range(int(preset["train"]["ensemble"])):
        torch.manual_seed(seed)
        members.append(build_model("a3", preset, LABELS).eval())
    src = root / "model-src" / "model"
    save_model(SeedEnsemble(members), src)
    (src / "feature_config.json").write_text(json.dumps(fc))
    files = {f"model/{p.name}": p for p in src.iterdir()}
    registry = Registry(open_store(str(root / "store")))
    version = registry.register("emoflow", files, {"arch": "a3", "preset": "offline-speech"})
    registry.promote("emoflow", version, "production")
    return str(root / "store")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def client_phase(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], float]:
    """Closed-loop load from `clients` keep-alive connections for `seconds` after a warm-up of one
    request each; returns (latencies in ms, wall seconds). Runs in the client process."""
    import httpx

    async def run() -> tuple[list[float], float]:
        headers = {"content-type": "application/json"}
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            async def one() -> float:
                t0 = time.perf_counter()
                r = await client.post("/v1/models/emoflow:predict", content=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                return (time.perf_counter() - t0) * 1000

            await asyncio.gather(*(one() for _ in range(clients)))  # warm every connection
            stop = time.perf_counter() + seconds
            done: list[float] = []

            async def worker():
                while time.perf_counter() < stop:
                    done.append(await one())

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return done, time.perf_counter() - t0

    return asyncio.run(run())


def measure(url: str, body: bytes, payload: dict, pred, clients: int, rounds: int, seconds: float) -> dict:
    """Interleaved rounds of (1 client, in-process, `clients` clients), `seconds` each, so that a
    changing background load hits every mode alike; the HTTP load comes from a separate client
    process. Returns pooled figures per mode."""
    import subprocess

    lat = {"one": [], "many": [], "local": [], "model": []}
    busy = {"one": 0.0, "many": 0.0}
    per_round = []
    with tempfile.NamedTemporaryFile(suffix=".json") as body_file:
        body_file.write(body)
        body_file.flush()

        def phase(mode: str, n: int) -> float:
            out = subprocess.run([sys.executable, __file__, "--client", url, body_file.name, str(n), str(seconds)],
                                 check=True, capture_output=True, text=True).stdout
            done, wall = json.loads(out.strip().splitlines()[-1])
            lat[mode] += done
            busy[mode] += wall
            return len(done) / wall

        run_batch = pred.runner.run_batch
        instances = pred.parse(payload)[0]
        for _ in range(5):
            run_batch(pred.parse(payload)[0])
        for _ in range(rounds):
            rps1 = phase("one", 1)
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:  # in-process: the same code path, no HTTP, no batcher
                t0 = time.perf_counter()
                run_batch(pred.parse(payload)[0])
                lat["local"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                run_batch(instances)
                lat["model"].append((time.perf_counter() - t0) * 1000)
            rpsn = phase("many", clients)
            per_round.append(rpsn / rps1)
    out = {mode: {"requests": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)} for mode, v in lat.items()}
    for mode in ("one", "many"):
        out[mode]["rps"] = len(lat[mode]) / busy[mode]
    out["per_round_speedup"] = per_round
    return out


def bench_preset(preset: str, args) -> dict:
    from emoflow.serving.local import reap_in_background, start_local_server, stop_local_server
    from emoflow.serving.predictor import EmotionPredictor
    from emoflow.serving.settings import ServingConfig

    with tempfile.TemporaryDirectory(prefix=f"bench-serving-{preset}-") as tmp:
        t0 = time.perf_counter()
        store = register_offline(Path(tmp)) if preset == "offline" else register(Path(tmp), preset)
        print(f"[{preset}] registered in {time.perf_counter() - t0:.1f} s", flush=True)
        audio = wav_payload(args.audio_seconds)
        payload = {"instances": [{"audio": base64.b64encode(audio).decode(), "text": TEXT}]}
        body = json.dumps(payload).encode()
        port = args.port or _free_port()
        extra = ["--max_batch_size", str(args.max_batch_size), "--max_wait_ms", str(args.max_wait_ms)]
        if args.torch_threads:
            extra += ["--torch_threads", str(args.torch_threads)]
        if args.model_workers:
            extra += ["--model_workers", str(args.model_workers)]
        url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port, extra_args=extra,
                                 timeout_s=300)
        pid = int((Path(os.environ["EMOFLOW_HOME"]) / "serve" / f"{port}.pid").read_text())
        reap_in_background(pid)
        config = ServingConfig()
        if args.torch_threads:
            config.torch_threads = args.torch_threads
        pred = EmotionPredictor("emoflow", "registry://emoflow@production", store=store, config=config)
        pred.load()
        try:
            res = measure(url, body, payload, pred, args.clients, args.rounds, args.seconds)
        finally:
            stop_local_server(port)
            pred._prep_pool.shutdown()
            pred._model_pool.shutdown()
        one, many, local = res["one"], res["many"], res["local"]
        local["model_p50"] = res["model"]["p50"]
        print(f"[{preset}] 1 client {one}\n[{preset}] {args.clients} clients {many}\n[{preset}] in-process {local}\n"
              f"[{preset}] speed-up per round {[round(x, 2) for x in res['per_round_speedup']]}", flush=True)
    return {
        "preset": preset, "one": one, "many": many, "local": local,
        "speedup": many["rps"] / one["rps"],
        "tail_1": one["p99"] / one["p50"], "tail_n": many["p99"] / many["p50"],
        "overhead": one["p50"] / local["p50"] - 1,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:  # the client process of one load phase: URL BODY_FILE CLIENTS SECONDS
        url, body_file, clients, seconds = argv[1:5]
        print(json.dumps(client_phase(url, Path(body_file).read_bytes(), int(clients), float(seconds))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", "--presets", dest="models", default="paper,offline",
                    help="comma separated: A1 presets (tiny, paper) and/or offline (A3 offline-speech ensemble)")
    ap.add_argument("--seconds", type=float, default=4.0, help="duration of each measured phase")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (1 client, in-process, N clients)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--audio-seconds", type=float, default=2.5)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--torch-threads", type=int, default=0, help="0: the predictor's default")
    ap.add_argument("--model-workers", type=int, default=0, help="0: the predictor's default")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    print(f"cpu cores {os.cpu_count()}, torch {torch.__version__}, load average {os.getloadavg()}", flush=True)
    rows = [bench_preset(p.strip(), args) for p in args.models.split(",") if p.strip()]
    print(f"\nP3 (CPU, {os.cpu_count()} cores, load average now {os.getloadavg()[0]:.1f}; "
          f"models randomly initialised; {args.audio_seconds:g} s WAV + text per request)")
    print(f"{'model':8} {'rps@1':>7} {'rps@' + str(args.clients):>7} {'x':>6} {'p50@1':>7} {'p99@1':>7} "
          f"{'p50@' + str(args.clients):>7} {'p99@' + str(args.clients):>7} {'p99/p50@1':>9} "
          f"{'p99/p50@' + str(args.clients):>10} {'inproc':>7} {'model':>6} {'overhead':>8}")
    for r in rows:
        o, m, lo = r["one"], r["many"], r["local"]
        print(f"{r['preset']:8} {o['rps']:7.1f} {m['rps']:7.1f} {r['speedup']:6.2f} {o['p50']:7.1f} {o['p99']:7.1f} "
              f"{m['p50']:7.1f} {m['p99']:7.1f} {r['tail_1']:9.2f} {r['tail_n']:10.2f} {lo['p50']:7.1f} "
              f"{lo['model_p50']:6.1f} {100 * r['overhead']:7.1f}%")
    print("targets: x >= 3, p99/p50 <= 2, overhead <= 15 %  (latencies in ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
