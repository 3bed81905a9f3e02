"""Q1 step 1: ingest RAVDESS (actors 01-18) and cache frozen-encoder embeddings once per clip.

    python benchmarks/q1_embed.py [--data ../shared/data/ravdess] [--encoders ct2-whisper:base resemblyzer]

Uses the product code paths: emoflow.corpora.ingest + emoflow.audio.embeddings.compute_embeddings
(cache keyed by the encoder spec hash, so a second run computes nothing). Writes the manifest with
``extra["embeddings"]`` keys to <store>/manifests/q1/ravdess_embedded.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emoflow.config import home

ENCODERS = {
    # layer statistics of every Whisper layer (mean and std per layer) + last-layer frames
    "ct2-whisper:base": {"source": "ct2-whisper:base", "engine": "torch", "layer": "last"},
    "ct2-whisper:tiny.en": {"source": "ct2-whisper:tiny.en", "engine": "torch", "layer": "last"},
    "resemblyzer": {"source": "resemblyzer"},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"))
    p.add_argument("--store", default=str(home() / "bench-store"))
    p.add_argument("--encoders", nargs="*", default=["ct2-whisper:base", "resemblyzer"])
    p.add_argument("--frames", action="store_true", help="store frame sequences too (large)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    import torch

    from emoflow.audio.embeddings import compute_embeddings
    from emoflow.corpora import ingest, write_manifest
    from emoflow.storage import open_store

    torch.set_num_threads(2)
    store = open_store(args.store)
    res = ingest("ravdess", args.data, store, copy_audio=False)
    utts = res.utterances
    print(f"ingested {len(utts)} utterances")
    for name in args.encoders:
        t = time.time()
        summary: dict = {}
        utts = compute_embeddings(utts, store, ENCODERS[name], "speech", stats=True, store_frames=args.frames,
                                  batch_size=args.batch_size, summary=summary, progress=True)
        print(json.dumps({"encoder": name, "seconds": round(time.time() - t, 1), **summary}))
    out = Path(args.store.removeprefix("file://")) / "manifests" / "q1" / "ravdess_embedded.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, utts)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
