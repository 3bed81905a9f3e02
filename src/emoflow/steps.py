"""The pipeline steps as plain functions: files and URIs in, files out.

Each KFP component in ``components/`` calls exactly one of these, so the same code runs in a
Kubeflow pod, under ``kfp.local`` and from tests. This module sits at the top of the library
(beside the CLI) and only wires the layers together.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

from emoflow import work
from emoflow.config import config_hash, store_uri
from emoflow.corpora import Utterance, read_manifest, write_manifest

log = logging.getLogger("emoflow.steps")


def plain(value):
    """Undo KFP's dict round trip through protobuf Struct, where every number becomes a float."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _store(uri: str | None):
    from emoflow.storage import open_store

    return open_store(uri or store_uri())


def _results(store, reuse_results: bool):
    """The store's reusable results (emoflow.storage.results); `reuse_results` False recomputes."""
    from emoflow.storage.results import ResultCache

    return ResultCache(store, reuse=reuse_results)


def ingest(corpus: str, source: str, store: str, manifest_path: str, options: dict | None = None) -> dict:
    """Corpus → validated manifest (audio copied into the store). Returns the summary."""
    from emoflow.corpora.ingest import ingest as run_ingest

    options = plain(dict(options or {}))
    if corpus == "demo" and not source:
        source = str(ensure_demo_corpus(options.pop("demo", {})))
    kwargs = {k: options.pop(k) for k in ("copy_audio", "max_bad_share", "min_duration", "max_duration") if k in options}
    result = run_ingest(corpus, source, _store(store), options=options, **kwargs)
    write_manifest(manifest_path, result.utterances)
    summary = dict(result.summary)
    summary.update(manifest_key=result.manifest_key, quarantine_key=result.quarantine_key)
    log.info("ingest %s: %s", corpus, json.dumps({k: summary.get(k) for k in ("in", "accepted", "quarantined")}))
    return summary


def ensure_demo_corpus(params: dict | None = None) -> Path:
    """Generate the synthetic demo corpus once under $EMOFLOW_HOME/demo/<params-hash>."""
    from emoflow.config import home
    from emoflow.corpora.synthetic import generate_demo_corpus

    params = dict(params or {})
    root = home() / "demo" / config_hash(params)
    if not (root / "manifest.jsonl").exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        generate_demo_corpus(tmp, **params)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


def transcribe(manifest_in: str, manifest_out: str, backend: str = "auto", store: str | None = None, *,
               reuse_results: bool = True) -> dict:
    """Fill `text` (reference pass-through or ASR); quarantined utterances are stored, not dropped.
    ASR results are kept in the store and reused by later runs (unless `reuse_results` is False)."""
    from emoflow.text.transcribe import transcribe as run_transcribe

    with work.counting("transcribe") as counted:
        st = _store(store)
        utts = read_manifest(manifest_in)
        kept, quarantine, summary = run_transcribe(utts, backend=backend, results=_results(st, reuse_results))
        if quarantine:
            key = f"quarantine/transcribe/{config_hash([q.get('id') for q in quarantine])}.jsonl"
            st.put_bytes(key, "".join(json.dumps(q) + "\n" for q in quarantine).encode())
            summary["quarantine_key"] = key
        write_manifest(manifest_out, kept)
    return {**summary, **counted}


EMBEDDING_KEYS = ("encoders", "embedding_options", "speaker_norm")


def features(manifest_in: str, manifest_out: str, store: str, feature_config: dict | None = None, *,
             reuse_results: bool = True) -> dict:
    """Log-mel features into the store, keyed by the feature config hash; optionally frozen-encoder
    embeddings and per-speaker statistics.

    Both are stored per utterance under keys of their audio and configuration, so a rerun reuses
    them without loading an encoder; `reuse_results` False computes them all again (replacing them).

    ``feature_config`` keys besides the LogMelConfig ones:
      encoders: list of speech encoder specs (or source strings, e.g. "ct2-whisper:tiny.en",
        "resemblyzer") whose embeddings are cached once per utterance (``extra["embeddings"]``, in
        this order; see emoflow.audio.embeddings);
      embedding_options: EmbeddingCache options (stats, store_frames, batch_size);
      speaker_norm: true for the speaker-normalised protocol (per-speaker statistics over all
        utterances, unlabelled; see emoflow.evaluation.normalization).
    """
    from emoflow.audio.features import extract_features
    from emoflow.audio.logmel import LogMelConfig

    given = plain(feature_config or {})
    cfg = LogMelConfig(**{k: v for k, v in given.items() if k not in EMBEDDING_KEYS})
    with work.counting("features") as counted:
        st = _store(store)
        utts = extract_features(read_manifest(manifest_in), st, cfg, recompute=not reuse_results)
        result = {"utterances": len(utts), "feature_config": cfg.__dict__, "config_hash": config_hash(cfg.__dict__)}
        encoders = given.get("encoders") or []
        if encoders:
            from emoflow.audio.embeddings import attach_embeddings, speech_caches

            result["embeddings"] = []
            # the predictor builds the same caches (online use)
            for cache in speech_caches(given, st, recompute=not reuse_results):
                summary: dict = {}
                utts = attach_embeddings(utts, cache, summary=summary)
                result["embeddings"].append({"encoder": cache.encoder, **summary})
        if given.get("speaker_norm"):
            if not encoders:
                raise ValueError("feature_config speaker_norm needs encoders (it normalises cached embeddings)")
            from emoflow.evaluation.normalization import write_speaker_stats

            utts, result["speaker_stats"] = write_speaker_stats(utts, st)
        result["protocol"] = "speaker-normalised" if given.get("speaker_norm") else "strict"
        write_manifest(manifest_out, utts)
    return {**result, **counted}


def train(
    manifest: str,
    store: str,
    arch: str,
    preset: str,
    out_dir: str,
    *,
    epochs: int = 0,
    fold_scheme: str = "logo",
    n_folds: int = 0,
    validation: str = "one_group",
    validation_share: float = 0.1,
    seed: int = 0,
    feature_config: dict | None = None,
    progress: bool = True,
    reuse_results: bool = True,
) -> dict:
    """Cross-validated training of one architecture + final fit (see emoflow.training.run); folds
    and final fits trained before on the same content are reused (unless `reuse_results` is False)."""
    from emoflow.training.run import run_training

    with work.counting("train") as counted:
        st = _store(store)
        summary = run_training(
            read_manifest(manifest), st, arch, preset, out_dir,
            fold_scheme=fold_scheme, n_folds=n_folds or None, validation=validation,
            validation_share=validation_share, seed=seed, epochs=epochs or None,
            checkpoint_prefix="checkpoints", progress=progress, results=_results(st, reuse_results),
        )
        result = _write_training(out_dir, summary, feature_config)
    return {**result, **counted}


def _write_training(out_dir: str, summary: dict, feature_config: dict | None) -> dict:
    """The model's feature config (what the predictor rebuilds) and ``train.json`` beside the model."""
    (Path(out_dir) / "model" / "feature_config.json").write_text(json.dumps(plain(feature_config or {})))
    result = {k: summary[k] for k in ("arch", "labels", "final_epochs", "device")}
    (Path(out_dir) / "train.json").write_text(json.dumps(result))
    return result


def publish_training(work_dir: str, model_dir: str, predictions_path: str) -> None:
    """Move a training run's outputs (``model/``, ``train.json``, ``predictions.json``) into the
    KFP artifact paths of the train/finalize components, and remove the work folder."""
    work, target = Path(work_dir), Path(model_dir)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(work / "model", target / "model", dirs_exist_ok=True)
    shutil.copy(work / "train.json", target / "train.json")
    shutil.copy(work / "predictions.json", predictions_path)
    shutil.rmtree(work)


def plan_folds(manifest: str, *, fold_scheme: str = "logo", n_folds: int = 0, seed: int = 0,
               validation: str = "one_group", validation_share: float = 0.1) -> list[str]:
    """Fold names of the cross-validation plan (what the per-fold fan-out iterates over)."""
    from emoflow.training.run import fold_plan

    return [f.name for f in fold_plan(read_manifest(manifest), fold_scheme, n_folds or None, seed,
                                      validation=validation, validation_share=validation_share)]


def train_fold(
    manifest: str,
    store: str,
    arch: str,
    preset: str,
    fold: str,
    out_path: str,
    *,
    epochs: int = 0,
    fold_scheme: str = "logo",
    n_folds: int = 0,
    validation: str = "one_group",
    validation_share: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    reuse_results: bool = True,
) -> dict:
    """One fold of one architecture (no final fit): its test predictions as JSON at `out_path`
    (reused when the same fold was trained before, unless `reuse_results` is False)."""
    import tempfile

    from emoflow.training.run import run_training

    with work.counting("train_fold") as counted, tempfile.TemporaryDirectory() as tmp:
        st = _store(store)
        summary = run_training(
            read_manifest(manifest), st, arch, preset, tmp, fold_scheme=fold_scheme,
            n_folds=n_folds or None, validation=validation, validation_share=validation_share,
            only_fold=fold, skip_final=True, seed=seed, epochs=epochs or None,
            checkpoint_prefix="checkpoints", progress=progress, results=_results(st, reuse_results),
        )
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "predictions.json", out_path)
    res = summary["folds"][fold]
    return {"arch": arch, "fold": fold, "best_epoch": res["best_epoch"], "best_val_ua": res["best_val_ua"],
            "run_key": summary["run_key"], "device": summary["device"], **counted}


def finalize(
    manifest: str,
    store: str,
    arch: str,
    preset: str,
    fold_predictions: Sequence[str],
    out_dir: str,
    *,
    epochs: int = 0,
    fold_scheme: str = "logo",
    n_folds: int = 0,
    validation: str = "one_group",
    validation_share: float = 0.1,
    seed: int = 0,
    feature_config: dict | None = None,
    progress: bool = True,
    reuse_results: bool = True,
) -> dict:
    """Merge the folds' predictions and fit the final model: the same out_dir as `train`.

    Only the parts of this architecture are used (the pipeline may collect every architecture's
    folds); every fold of the plan must be there exactly once. A final fit done before on the same
    content is reused (unless `reuse_results` is False)."""
    from emoflow.training.run import finalize_training

    parts = [json.loads(Path(p).read_text()) for p in fold_predictions]
    mine = [p for p in parts if p.get("arch") == arch]
    if not mine:
        raise ValueError(f"no fold predictions for architecture {arch!r} among "
                         f"{sorted({str(p.get('arch')) for p in parts})}")
    with work.counting("finalize") as counted:
        st = _store(store)
        summary = finalize_training(
            read_manifest(manifest), st, arch, preset, out_dir, mine, fold_scheme=fold_scheme,
            n_folds=n_folds or None, validation=validation, validation_share=validation_share, seed=seed,
            epochs=epochs or None, checkpoint_prefix="checkpoints", progress=progress,
            results=_results(st, reuse_results),
        )
        result = _write_training(out_dir, summary, feature_config)
    return {**result, **counted}


def fingerprint(manifest: str, *, architectures: Sequence[str] = (), preset: str = "",
                feature_config: dict | None = None, **settings) -> str:
    """Content key of a run: sha256 of the manifest bytes (audio is content-addressed in it), each
    architecture's resolved preset and the feature config, plus `settings`.

    KFP's cache key (input parameter values, input artifact ids, image, command) holds the ids of
    the input artifacts, which are new in every run because ingest is never cached: passed to a
    step as a parameter, this key only makes a KFP cache hit honest when one happens. The reuse
    that does happen across runs is the steps' own (``emoflow.storage.results``)."""
    import hashlib

    from emoflow.training.run import resolve_preset

    data = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    presets = {a: config_hash(resolve_preset(a, preset)) for a in sorted(architectures)} if preset else {}
    return config_hash({"data": data, "presets": presets, "features": plain(feature_config or {}),
                        "settings": plain(settings)}, 16)


def evaluate(predictions: str, out_dir: str, *, metrics_artifact=None, classification_artifact=None,
             corpus: str = "", protocol: str | None = None) -> dict:
    """Fold predictions → metrics (per fold, mean ± std, pooled), report, confusion PNG, KFP metrics.

    A multi-label run (``task: multilabel`` in the predictions) is also scored per emotion on its
    presence sets (Makhmudov et al. 2024, Eq. 4-6, and their means over emotions: ``ml_wa``,
    ``ml_accuracy``, ``ml_f1``; see ``emoflow.evaluation.metrics.aggregate``)."""
    from emoflow.evaluation.metrics import aggregate
    from emoflow.evaluation.report import write_report

    pred = json.loads(Path(predictions).read_text())
    labels, arch = pred["labels"], pred["arch"]
    protocol = protocol or pred.get("protocol", "strict")
    task = pred.get("task", "single_label")
    keys = ("y_true", "y_pred") + (("true_sets", "pred_sets") if task == "multilabel" else ())
    folds = {name: {k: f[k] for k in keys} for name, f in pred["folds"].items()}
    result = aggregate(folds, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    validation = pred.get("validation")
    paths = write_report({arch: result}, out, corpus=corpus, protocol=protocol, validation=validation)
    if metrics_artifact is not None:
        from emoflow.evaluation.kfp_outputs import log_kfp_metrics

        log_kfp_metrics(metrics_artifact, classification_artifact, result, labels)
    predicted = [y for f in pred["folds"].values() for y in f["y_pred"]]
    reference = {lab: predicted.count(lab) / max(len(predicted), 1) for lab in labels}
    summary = {
        "arch": arch,
        "preset": pred["preset"].get("name"),
        "labels": labels,
        "corpus": corpus,
        "protocol": protocol,
        "validation": validation,
        "task": task,
        "metrics": result,
        "reference_shares": reference,
        "report_files": {k: str(v) for k, v in paths.items()},
    }
    (out / "evaluation.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def register(
    model_dirs: Sequence[str],
    evaluation_dirs: Sequence[str],
    store: str,
    *,
    model_name: str = "emoflow",
    alias: str = "production",
    winner_metric: str = "ua",
    promote_margin: float = 0.0,
    run_id: str = "",
) -> dict:
    """Pick the winner across architectures, register it, and move the alias when it earns it.

    With alias ``candidate`` (retraining), the new version becomes ``candidate`` and is promoted
    to ``production`` only if it beats production on `winner_metric` by `promote_margin`.
    """
    from emoflow.evaluation.report import select_winner, write_report
    from emoflow.monitoring.promotion import should_promote
    from emoflow.registry import Registry

    evaluations = [json.loads((Path(d) / "evaluation.json").read_text()) for d in evaluation_dirs]
    by_arch = {e["arch"]: e for e in evaluations}
    check_winner_metric(winner_metric, {a: e.get("task", "single_label") for a, e in by_arch.items()})
    winner = select_winner({a: e["metrics"] for a, e in by_arch.items()}, metric=winner_metric)
    model_dir = next(Path(d) for d in model_dirs if json.loads((Path(d) / "train.json").read_text())["arch"] == winner)
    ev = by_arch[winner]
    files: dict = {}
    for path in sorted((model_dir / "model").iterdir()):
        files[f"model/{path.name}"] = path
    eval_dir = Path(next(d for d in evaluation_dirs if json.loads((Path(d) / "evaluation.json").read_text())["arch"] == winner))
    for path in sorted(eval_dir.iterdir()):
        if path.is_file():
            files[f"evaluation/{path.name}"] = path
    comparison = Path(model_dir).parent / "comparison"
    report = write_report({a: e["metrics"] for a, e in by_arch.items()}, comparison,
                          corpus=ev.get("corpus", ""), protocol=ev.get("protocol", "strict"), winner=winner)
    files["comparison.md"] = Path(report["report_md"])
    files["comparison.html"] = Path(report["report_html"])
    files["reference_distribution.json"] = json.dumps(ev["reference_shares"], indent=1).encode()
    files["model_card.md"] = model_card(model_name, ev, by_arch, winner_metric).encode()
    metadata = {
        "arch": winner, "preset": ev.get("preset"), "labels": ev["labels"], "corpus": ev.get("corpus"),
        "protocol": ev.get("protocol"), "winner_metric": winner_metric,
        "metric_value": ev["metrics"]["mean"][winner_metric], "pipeline_run": run_id,
        "candidates": {a: e["metrics"]["mean"][winner_metric] for a, e in by_arch.items()},
    }
    registry = Registry(_store(store))
    version = registry.register(model_name, files, metadata)
    decision = {"promoted": False, "reason": ""}
    if alias == "production":
        registry.promote(model_name, version, "production")
        decision = {"promoted": True, "reason": "registered directly as production"}
    else:
        registry.set_alias(model_name, alias, version)
        current = registry.get_alias(model_name, "production")
        prod_value = None
        if current is not None:
            prod_value = registry.show(f"{model_name}@{current}")["metadata"].get("metric_value")
        ok, reason = should_promote(
            {winner_metric: metadata["metric_value"]},
            None if prod_value is None else {winner_metric: prod_value},
            metric=winner_metric, margin=promote_margin,
        )
        if ok:
            registry.promote(model_name, version, "production")
        decision = {"promoted": bool(ok), "reason": reason}
    log.info("registered %s/%s (winner %s); production: %s", model_name, version, winner, decision)
    results = {
        arch: {
            "preset": e.get("preset"),
            "folds": {f: {k: m[k] for k in ("ua", "wa", "wf1")} for f, m in e["metrics"]["folds"].items()},
            "mean": e["metrics"]["mean"], "std": e["metrics"]["std"],
            "pooled": {k: e["metrics"]["pooled"][k] for k in ("ua", "wa", "wf1", "mf1")},
        }
        for arch, e in by_arch.items()
    }
    return {"model": model_name, "version": version, "winner": winner, "ref": f"{model_name}@{version}",
            "metric": winner_metric, "value": metadata["metric_value"], "results": results, **decision}


def check_winner_metric(metric: str, tasks: dict[str, str]) -> None:
    """The winner metric must score the task every candidate was trained for: a multi-label run is
    ranked on a multi-label metric (``ml_wa``: mean Eq. 6 WA over emotions), a single-label run on a
    single-label one; an error names the candidates that do not fit."""
    from emoflow.evaluation.metrics import MULTILABEL_METRICS, SCALAR_METRICS

    wanted = "multilabel" if metric in MULTILABEL_METRICS else "single_label"
    if metric not in MULTILABEL_METRICS + SCALAR_METRICS:
        raise ValueError(f"unknown winner_metric {metric!r} ({', '.join(SCALAR_METRICS + MULTILABEL_METRICS)})")
    odd = sorted(a for a, t in tasks.items() if t != wanted)
    if odd:
        hint = ("a multi-label run is ranked on ml_wa" if wanted == "single_label"
                else "a single-label run has no multi-label metrics")
        raise ValueError(f"winner_metric {metric!r} does not fit the {tasks[odd[0]]} run of {odd}: {hint}")


def model_card(name: str, ev: dict, by_arch: dict, metric: str) -> str:
    from emoflow.evaluation.folds import describe_validation

    m = ev["metrics"]
    lines = [
        f"# Model card: {name} ({ev['arch']}, preset {ev.get('preset')})",
        "",
        f"- Data: corpus `{ev.get('corpus') or 'unknown'}`; labels: {', '.join(ev['labels'])}.",
        f"- Protocol: {ev.get('protocol', 'strict')} cross-validation; groups never shared between train and test.",
        *([f"- Model selection: {describe_validation(ev['validation']['mode'], ev['validation'].get('share'))}."]
          if ev.get("validation") else []),
        f"- Selected by mean {metric.upper()} across folds among: "
        + ", ".join(f"{a} {e['metrics']['mean'][metric] * 100:.1f}" for a, e in sorted(by_arch.items())),
        "",
        "| metric | fold mean ± std | pooled |",
        "|---|---|---|",
    ]
    for key in ("ua", "wa", "wf1", "mf1", "ml_wa", "ml_accuracy", "ml_f1"):
        if m["mean"].get(key) is not None:
            lines.append(f"| {key.upper()} | {m['mean'][key] * 100:.2f} ± {m['std'][key] * 100:.2f} | "
                         f"{m['pooled'][key] * 100:.2f} |")
    lines += [
        "",
        "## Limits",
        "- Trained on the corpus above only; acted or synthetic speech does not represent spontaneous speech.",
        "- The demo corpus is synthetic (espeak-ng) and only for smoke tests: its figures mean nothing about real use.",
        "- Licence of the data applies to this model (e.g. RAVDESS CC BY-NC-SA 4.0, MELD GPL-3.0: non-commercial).",
    ]
    return "\n".join(lines) + "\n"


def deploy(model_ref: str, store: str, *, target: str = "local", host: str = "127.0.0.1", port: int = 8080,
           namespace: str = "", isvc_name: str = "emoflow", storage_uri: str = "",
           gpu: int | str = 1, node_selector: dict | None = None, tolerations: list | None = None,
           service_account: str = "emoflow-s3", canary_traffic_percent: int = -1,
           timeout_s: int = 3600, image: str = "", image_pull_secrets: list | None = None,
           assets: str = "") -> str:
    """Serve a registered model: locally on `host:port`, or as a KServe InferenceService.

    For ``kserve``: ``image`` is the serving image fixed when the pipeline was compiled (its
    ``serving_image`` parameter); empty means ``emoflow.images`` of this process (local CLI use),
    and the placeholder registry is refused. ``namespace`` empty means the namespace of the pod this
    runs in. ``gpu`` may be a string ("1"): pipeline parameters that feed pod specs are strings.
    The storage URI is the registered version's prefix, always ending in ``/``.
    """
    if target == "local":
        from emoflow.serving.local import start_local_server

        return start_local_server(model_ref, store or store_uri(), host=host, port=port)
    if target == "kserve":
        from emoflow import images
        from emoflow.registry import Registry
        from emoflow.serving.deploy import build_inference_service, current_namespace, deploy_to_cluster

        try:
            gpus = int(str(gpu).strip())
        except ValueError:
            raise ValueError(f"gpu must be a whole number of GPUs (e.g. 1 or \"1\"), got {gpu!r}") from None
        if not storage_uri:
            name, version = Registry(_store(store)).resolve(model_ref)
            storage_uri = _store(store).uri(f"registry/{name}/{version}")  # "/" added by the builder
        isvc = build_inference_service(
            isvc_name, namespace or current_namespace(), storage_uri, gpu=gpus,
            image=image or images.image("serve-gpu" if gpus > 0 else "serve"),
            node_selector=plain(node_selector) or None, tolerations=plain(tolerations) or None,
            service_account=service_account,
            canary_traffic_percent=canary_traffic_percent if canary_traffic_percent >= 0 else None,
            image_pull_secrets=plain(image_pull_secrets) or None, assets=assets,
        )
        ready = deploy_to_cluster(isvc, timeout_s=timeout_s)
        return str((ready.get("status") or {}).get("url") or f"{isvc_name}.{isvc.metadata.namespace}")
    raise ValueError(f"unknown deploy target {target!r} (local, kserve)")


def score(model_ref: str, corpus: str, source: str, store: str, out_dir: str, *,
          transcribe_backend: str = "auto", mode: str = "both", options: dict | None = None) -> dict:
    """Score a registered model on another labelled corpus (e.g. new data after deployment)."""
    from emoflow.audio.features import extract_features
    from emoflow.audio.logmel import LogMelConfig
    from emoflow.corpora.ingest import ingest as run_ingest
    from emoflow.evaluation.metrics import compute_metrics
    from emoflow.evaluation.report import write_report
    from emoflow.models import load_model
    from emoflow.registry import Registry
    from emoflow.text.transcribe import transcribe as run_transcribe
    from emoflow.training.data import load_items
    from emoflow.training.multilabel import model_task
    from emoflow.training.trainer import pick_device, predict

    st = _store(store)
    registry = Registry(st)
    name, version = registry.resolve(model_ref)
    out = Path(out_dir)
    local = out / "model"
    registry.download(f"{name}@{version}", local)
    model = load_model(local / "model")
    if model_task(model) != "single_label":
        raise ValueError(f"{name}/{version} is a {model_task(model)} model: score rates single-label models "
                         "(evaluate a multi-label run's predictions with the evaluate step)")
    labels = list(model.labels)
    fc = local / "model" / "feature_config.json"
    cfg = LogMelConfig(**(json.loads(fc.read_text()) if fc.exists() else {}))
    result = run_ingest(corpus, source, st, options=options, copy_audio=False)
    utts, quarantine, _ = run_transcribe(result.utterances, backend=transcribe_backend)
    unknown = sorted({u.label for u in utts} - set(labels))
    kept = [u for u in utts if u.label in labels]
    if not kept:
        raise ValueError(f"none of the corpus labels {unknown} are known to {name}/{version} ({labels})")
    utts = extract_features(kept, st, cfg) if "logmel" in model.inputs else kept
    data = load_items(utts, st, labels, set(model.inputs))
    pred = predict(model.to(pick_device()), data, mode=mode)
    y_true = [labels[i] for i in pred["labels"]]
    y_pred = [labels[i] for i in pred["probs"].argmax(1)]
    metrics = compute_metrics(y_true, y_pred, labels)
    entry = {"folds": {"all": metrics}, "n_folds": 1, "mean": {k: metrics[k] for k in ("ua", "wa", "wf1", "mf1")},
             "std": {k: 0.0 for k in ("ua", "wa", "wf1", "mf1")}, "pooled": metrics, "labels": labels}
    paths = write_report({f"{name}/{version}": entry}, out, corpus=corpus, protocol="strict",
                         title=f"{name}/{version} on {corpus}")
    summary = {
        "model": f"{name}/{version}", "corpus": corpus, "n": len(y_true),
        "skipped_unknown_labels": {lab: sum(u.label == lab for u in result.utterances) for lab in unknown},
        "quarantined": len(result.quarantine) + len(quarantine),
        **{k: metrics[k] for k in ("ua", "wa", "wf1", "mf1")},
    }
    (out / "score.json").write_text(json.dumps(summary, indent=1))
    return {"summary": summary, "report": {k: str(v) for k, v in paths.items()}}
