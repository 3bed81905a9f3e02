"""P2: encoder forward passes per utterance across a multi-architecture x multi-fold run.

Four downstream "architectures" (linear probe and MLP on pooled embeddings, attention pooling
and a 1-D CNN on frame sequences) are trained for a few steps on each of five leave-one-group-out
folds, reading frozen-encoder embeddings through ``emoflow.audio.embeddings.EmbeddingCache``.
With the store cache every utterance goes through each encoder once (1.0 forward pass per
utterance); without it (a fresh store per architecture x fold) 4 x 5 = 20. Counted by the
cache's own forward counter, for a speech encoder (tiny random wav2vec2 unless --speech-spec)
and, when the offline MiniLM asset is unpacked, a text encoder.

    python benchmarks/bench_encoder_cache.py [--data ../shared/data/ravdess] [--per-group 8]
"""

from __future__ import annotations

import argparse
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
import torch  # noqa: E402
from torch import nn  # noqa: E402

TINY_W2V = {"source": "wav2vec2", "init": "random", "config": {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
    "conv_dim": [32, 32, 32], "conv_kernel": [10, 8, 8], "conv_stride": [5, 8, 8],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "mask_time_prob": 0.0,
    "layerdrop": 0.0, "feat_extract_norm": "layer", "do_stable_layer_norm": True}}
RAVDESS_TEXT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def corpus(args, tmp: Path):
    from emoflow.corpora.record import Utterance

    root = Path(args.data)
    utts = []
    if root.is_dir():
        for actor in sorted(root.glob("Actor_*"))[: args.groups]:
            for f in sorted(actor.glob("*.flac"))[:: 60 // args.per_group][: args.per_group]:
                parts = f.stem.split("-")
                utts.append(Utterance(id=f.stem, audio=str(f), text=RAVDESS_TEXT[parts[4]], label=parts[2],
                                      speaker=actor.name, session=actor.name, corpus="ravdess"))
        source = f"RAVDESS ({root})"
    if not utts:  # no real data: tones and noise in 5 groups
        import soundfile as sf

        rng = np.random.default_rng(0)
        for g in range(args.groups):
            for i in range(args.per_group):
                path = tmp / f"g{g}_{i}.wav"
                t = np.arange(16000 + 1600 * i) / 16000
                sf.write(path, (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(t.size))
                         .astype(np.float32), 16000)
                utts.append(Utterance(id=f"g{g}_{i}", audio=str(path), text=f"utterance {i} of group {g}",
                                      label=str(i % 4), speaker=f"g{g}", session=f"g{g}", corpus="tones"))
        source = "generated tones (no RAVDESS here)"
    return utts, source


class Probe(nn.Module):
    def __init__(self, kind: str, dim: int, n_classes: int):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(dim, n_classes)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, n_classes))
        elif kind == "attention":
            self.score = nn.Linear(dim, 1)
            self.net = nn.Linear(dim, n_classes)
        else:
            self.conv = nn.Conv1d(dim, 32, kernel_size=5, padding=2)
            self.net = nn.Linear(32, n_classes)

    def forward(self, b):
        if self.kind in ("linear", "mlp"):
            return self.net(b["pooled"])
        x, m = b["frames"], b["frames_mask"]
        if self.kind == "attention":
            s = self.score(x).squeeze(-1).masked_fill(~m, -1e9).softmax(-1)
            return self.net((s.unsqueeze(-1) * x).sum(1))
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2) * m.unsqueeze(-1)
        return self.net(h.sum(1) / m.sum(1, keepdim=True))


ARCHS = ("linear", "mlp", "attention", "conv")


def run(utts, spec, kind, store_for, steps=5):
    """Train each architecture on each LOGO fold; returns (forwards per utterance, seconds, mean acc)."""
    from emoflow.audio.embeddings import EmbeddingCache, forward_count

    groups = sorted({u.session for u in utts})
    labels = sorted({u.label for u in utts})
    y_all = {u.id: labels.index(u.label) for u in utts}
    before, t0, accs = forward_count(), time.perf_counter(), []
    for arch in ARCHS:
        for g in groups:
            cache = EmbeddingCache(store_for(arch, g), spec, kind, progress=False)
            train = [u for u in utts if u.session != g]
            test = [u for u in utts if u.session == g]
            tr, te = cache.batch(train), cache.batch(test)
            torch.manual_seed(0)
            model = Probe(arch, tr["pooled"].shape[1], len(labels))
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            y = torch.tensor([y_all[u.id] for u in train])
            for _ in range(steps):
                opt.zero_grad()
                nn.functional.cross_entropy(model(tr), y).backward()
                opt.step()
            with torch.no_grad():
                pred = model(te).argmax(-1)
            accs.append(float((pred == torch.tensor([y_all[u.id] for u in test])).float().mean()))
    return (forward_count() - before) / len(utts), time.perf_counter() - t0, float(np.mean(accs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ravdess"))
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--per-group", type=int, default=8)
    ap.add_argument("--speech-spec", default=None, help="JSON encoder spec (default: tiny random wav2vec2)")
    args = ap.parse_args(argv)

    from emoflow.assets import AssetMissing, asset_path
    from emoflow.storage.local import LocalStore

    encoders = [("speech", json.loads(args.speech_spec) if args.speech_spec else TINY_W2V)]
    try:
        asset_path("minilm")
        encoders.append(("text", {"source": "minilm"}))
    except AssetMissing as exc:
        print(f"(text encoder skipped: {exc})")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        utts, source = corpus(args, tmp)
        n_groups = len({u.session for u in utts})
        print(f"P2 encoder forward passes per utterance: {len(utts)} utterances from {source}, "
              f"{len(ARCHS)} architectures x {n_groups} folds (leave one group out)")
        ok = True
        for kind, spec in encoders:
            shared = LocalStore(tmp / "store")
            cached = run(utts, spec, kind, lambda a, g: shared)
            rerun = run(utts, spec, kind, lambda a, g: shared)
            fresh = run(utts, spec, kind, lambda a, g: LocalStore(tmp / f"nocache-{kind}-{a}-{g}"))
            print(f"  {kind:6s} encoder {spec['source']!r}:")
            print(f"    with store cache : {cached[0]:5.1f} forward/utt  {cached[1]:6.2f} s  (mean fold acc {cached[2]:.2f})")
            print(f"    re-run, cached   : {rerun[0]:5.1f} forward/utt  {rerun[1]:6.2f} s")
            print(f"    without cache    : {fresh[0]:5.1f} forward/utt  {fresh[1]:6.2f} s  "
                  f"-> {fresh[0] / cached[0]:.0f}x the encoder work")
            ok &= cached[0] == 1.0 and rerun[0] == 0.0 and fresh[0] == len(ARCHS) * n_groups
        print("P2 PASS" if ok else "P2 FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
