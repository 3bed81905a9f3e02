"""Q1: RAVDESS 8-class, speaker-independent (6 folds of 3 actors over actors 01-18).

    python benchmarks/q1_ravdess.py [--presets offline-speech] [--protocols strict speaker-normalised]

Product code paths only: ingest (emoflow.corpora) -> features step (emoflow.steps.features with
feature_config.encoders: frozen Whisper base + GE2E embeddings cached once per clip, and
speaker_norm for the speaker-normalised protocol) -> emoflow.training.run.run_training (A3
preset, emoflow trainer, folds "speaker_groups" with validation carved from training actors)
-> emoflow.steps.evaluate (metrics, report under the named protocol). The encoder cache is the
one benchmarks/q1_embed.py fills; a first run computes it (about 25 min on 2 CPU cores).
Prints a JSON line per (preset, protocol) and writes <out>/q1_results.json.
Optional --probe adds a scikit-learn logistic-regression reference line on the same cached vectors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emoflow.config import home, load_yaml

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    p.add_argument("--store", default=str(home() / "bench-store"))
    p.add_argument("--out", default=str(home() / "bench-out" / "q1"))
    p.add_argument("--arch", default="a3")
    p.add_argument("--presets", nargs="*", default=["offline-speech"])
    p.add_argument("--protocols", nargs="*", default=["strict", "speaker-normalised"])
    p.add_argument("--n-folds", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--probe", action="store_true")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from emoflow import steps
    from emoflow.corpora import ingest, read_manifest, write_manifest
    from emoflow.models import load_preset
    from emoflow.storage import open_store
    from emoflow.training.run import run_training

    torch.set_num_threads(2)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("emoflow.training").setLevel(logging.INFO)
    store = open_store(args.store)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = ingest("ravdess", args.data, store, copy_audio=False)
    raw = out / "manifest.jsonl"
    write_manifest(raw, res.utterances)
    results = []
    for preset_name in args.presets:
        preset = load_yaml(preset_name) if preset_name.endswith((".yaml", ".yml")) else load_preset(args.arch, preset_name)
        label = preset.get("name", preset_name)
        feats = preset.get("features", {})
        for protocol in args.protocols:
            fc = {"encoders": feats.get("encoders", []), "embedding_options": feats.get("embedding_options", {}),
                  "speaker_norm": protocol == "speaker-normalised"}
            t0 = time.time()
            man = out / f"features-{protocol}.jsonl"
            fsum = steps.features(str(raw), str(man), store.uri(""), fc)
            utts = read_manifest(man)
            t_feat = time.time() - t0
            probs, y_true, ids = [], None, None
            for seed in args.seeds:
                run_dir = out / f"{args.arch}-{label}-{protocol}-s{seed}"
                t1 = time.time()
                summary = run_training(utts, store, args.arch, preset if preset_name.endswith((".yaml", ".yml"))
                                       else preset_name, run_dir, fold_scheme="speaker_groups",
                                       n_folds=args.n_folds, seed=seed, epochs=args.epochs or None,
                                       checkpoint_prefix=None, skip_final=True, progress=False)
                t_train = time.time() - t1
                ev = steps.evaluate(str(run_dir / "predictions.json"), str(run_dir / "eval"), corpus="ravdess",
                                    protocol=protocol)
                m = json.loads((run_dir / "eval" / "metrics.json").read_text()) if (
                    run_dir / "eval" / "metrics.json").exists() else {}
                met = ev.get("metrics", {})
                row = {"arch": args.arch, "preset": label, "protocol": fsum["protocol"], "seed": seed,
                       "features_s": round(t_feat, 1), "train_s": round(t_train, 1),
                       "mean": {k: round(100 * met["mean"][k], 2) for k in ("ua", "wa", "wf1") if k in met.get("mean", {})},
                       "std": {k: round(100 * met["std"][k], 2) for k in ("ua", "wa", "wf1") if k in met.get("std", {})},
                       "pooled": {k: round(100 * met["pooled"][k], 2) for k in ("ua", "wa", "wf1")
                                  if k in met.get("pooled", {})},
                       "report": str(run_dir / "eval")}
                results.append(row)
                print(json.dumps(row, default=str), flush=True)
                folds = summary["folds"]
                order = sorted(i for f in folds.values() for i in f["ids"])
                by_id = {i: (pr, yt) for f in folds.values() for i, pr, yt in zip(f["ids"], f["probs"], f["y_true"])}
                probs.append(np.array([by_id[i][0] for i in order]))
                y_true, ids = [by_id[i][1] for i in order], order
            if len(args.seeds) > 1:  # seed ensemble: mean probabilities of the seeds' fold models
                from emoflow.evaluation.metrics import compute_metrics

                labels = summary["labels"]
                pred = [labels[k] for k in np.mean(probs, 0).argmax(1)]
                m = compute_metrics(y_true, pred, labels)
                row = {"arch": args.arch, "preset": label, "protocol": fsum["protocol"],
                       "seed": f"ensemble of {len(args.seeds)}", "pooled": {k: round(100 * m[k], 2) for k in
                                                                            ("ua", "wa", "wf1")}}
                results.append(row)
                print(json.dumps(row), flush=True)
            if args.probe:
                results.append(_probe(utts, store, protocol))
                print(json.dumps(results[-1]), flush=True)
    (out / "q1_results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


def _probe(utts, store, protocol: str) -> dict:
    """Reference line: scikit-learn logistic regression on the same cached vectors, same folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from emoflow.evaluation.folds import make_folds
    from emoflow.evaluation.metrics import compute_metrics
    from emoflow.evaluation.normalization import SpeakerNormalizer
    from emoflow.training.data import load_embedding_item

    norm = SpeakerNormalizer.from_utterances(utts, store)
    rows = []
    for u in utts:
        e = load_embedding_item(u, store, None, norm)
        rows.append(np.concatenate([e["layers"].reshape(-1) if "layers" in e else [], e.get("vec", [])]))
    x = np.stack(rows)
    labels = sorted({u.label for u in utts})
    y = np.array([u.label for u in utts])
    index = {u.id: i for i, u in enumerate(utts)}
    y_true, y_pred = [], []
    for fold in make_folds(utts, scheme="speaker_groups", n_folds=6, seed=0):
        tr = [index[i] for i in list(fold.train_ids) + list(fold.val_ids)]
        te = [index[i] for i in fold.test_ids]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        clf.fit(x[tr], y[tr])
        y_true += list(y[te])
        y_pred += list(clf.predict(x[te]))
    m = compute_metrics(y_true, y_pred, labels)
    return {"arch": "sklearn-logreg-probe", "protocol": protocol,
            "pooled": {k: round(100 * m[k], 2) for k in ("ua", "wa", "wf1")}}


if __name__ == "__main__":
    raise SystemExit(main())
