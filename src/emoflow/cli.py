"""The ``emoflow`` command: one subcommand per task.

    emoflow run        run the training pipeline on this machine (kfp.local), serve the winner
    emoflow compile    write the pipeline YAML to upload in the Kubeflow UI
    emoflow submit     upload and run the pipeline on a Kubeflow Pipelines host
    emoflow serve      start the KServe predictor for a registered model on 127.0.0.1
    emoflow evaluate   score a registered model on another labelled corpus
    emoflow models     list / show / promote / rollback registered models; `models presets` for sizes
    emoflow mirror     copy a hub model into an s3:// mirror (where a hub is reachable)
    emoflow schedule   recurring retraining run on Kubeflow
    emoflow retrain-webhook   Alertmanager receiver that starts retraining on drift
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from pathlib import Path

from emoflow.config import home, load_yaml, store_uri

LOCAL_PARALLEL_TASKS = 2  # what kfp.local's SubprocessRunner runs at once

RUN_DEFAULTS = {
    "corpus": "demo",
    "source": "",
    "architectures": ["a1"],
    "preset": "demo",
    "epochs": 4,
    "fold_scheme": "logo",
    "n_folds": 0,
    "seed": 0,
    "transcribe_backend": "auto",
    "model_name": "emoflow",
    "alias": "production",
    "winner_metric": "ua",
    "deploy_target": "local",
    "serve_port": 8080,
    "fan_out_folds": False,
}


def project_root() -> Path:
    """The checkout holding pipelines/ and components/ (compile/run need them)."""
    for base in [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]:
        if (base / "pipelines" / "training.py").exists() and (base / "components").is_dir():
            return base
    raise SystemExit("emoflow: run this from the emoflow checkout (pipelines/ and components/ not found)")


def _import_pipelines():
    root = str(project_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipelines import training

    return training


def cmd_compile(args: argparse.Namespace) -> int:
    training = _import_pipelines()
    path = training.compile_pipeline(args.output)
    print(f"pipeline written to {path}: upload it in the Kubeflow UI (Pipelines → Upload pipeline)")
    return 0


def _run_config(args: argparse.Namespace) -> dict:
    cfg = dict(RUN_DEFAULTS)
    if args.config:
        loaded = load_yaml(args.config) or {}
        unknown = set(loaded) - set(RUN_DEFAULTS) - {"feature_config", "ingest_options", "store", "promote_margin"}
        if unknown:
            raise SystemExit(f"emoflow run: unknown keys in {args.config}: {sorted(unknown)}")
        cfg.update(loaded)
    for key in RUN_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if isinstance(cfg["architectures"], str):
        cfg["architectures"] = [a.strip() for a in cfg["architectures"].split(",") if a.strip()]
    cfg["store"] = args.store or cfg.get("store") or store_uri()
    return cfg


def print_results(registration: dict) -> None:
    results = registration.get("results") or {}
    print("\nResults (cross-validated; UA = unweighted accuracy, WA = weighted accuracy, WF1 = weighted F1, in %)")
    for arch, res in sorted(results.items()):
        print(f"\n  {arch}  (preset {res.get('preset')})")
        print(f"    {'fold':<14}{'UA':>13}{'WA':>13}{'WF1':>13}")
        for fold in sorted(res["folds"], key=lambda f: (len(f), f)):
            m = res["folds"][fold]
            print(f"    {fold:<14}" + "".join(f"{m[k] * 100:13.1f}" for k in ("ua", "wa", "wf1")))
        mean, std, pooled = res["mean"], res["std"], res["pooled"]
        print(f"    {'mean ± std':<14}" + "".join(f"{mean[k] * 100:7.1f} ± {std[k] * 100:<3.1f}".rjust(13) for k in ("ua", "wa", "wf1")))
        print(f"    {'pooled':<14}" + "".join(f"{pooled[k] * 100:13.1f}" for k in ("ua", "wa", "wf1")))
    print(f"\nWinner: {registration['winner']} (mean {registration['metric'].upper()} {registration['value'] * 100:.1f}) "
          f"registered as {registration['model']}/{registration['version']}; production: "
          f"{'yes' if registration.get('promoted') else 'no'} ({registration.get('reason', '')})")


def demo_request(url: str, model_name: str, cfg: dict) -> dict:
    """One real HTTP request to the served model, with a clip of the corpus just trained on."""
    import httpx

    from emoflow.corpora import read_manifest
    from emoflow.steps import ensure_demo_corpus

    clip, text, label = None, None, None
    if cfg["corpus"] == "demo" and not cfg["source"]:
        root = ensure_demo_corpus((cfg.get("ingest_options") or {}).get("demo", {}))
        utt = read_manifest(root / "manifest.jsonl")[0]
        clip, text, label = root / utt.audio, utt.text, utt.label
    if clip is None:
        return {}
    body = {"instances": [{"audio": base64.b64encode(Path(clip).read_bytes()).decode(), "text": text}]}
    response = httpx.post(f"{url}/v1/models/{model_name}:predict", json=body, timeout=60)
    response.raise_for_status()
    pred = response.json()["predictions"][0]
    print(f"\nServed prediction from {url}/v1/models/{model_name}:predict")
    print(f"  clip {Path(clip).name} (label {label}, text {text!r})")
    print(f"  → {pred['label']}  " + "  ".join(f"{k} {v:.2f}" for k, v in pred["probabilities"].items())
          + f"  [mode {pred['mode']}, model {pred['model']} {pred['version']}]")
    return pred


def cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(home() / "numba"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # kfp.local runs up to LOCAL_PARALLEL_TASKS tasks at once: share the cores instead of
    # oversubscribing them (two 2-thread tasks on 2 cores made small models' epochs 30x slower)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // LOCAL_PARALLEL_TASKS)))
    cfg = _run_config(args)
    training = _import_pipelines()
    from kfp import local

    root = home() / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    params = {k: cfg[k] for k in cfg if k in training.pipeline_params()}
    print(f"emoflow run: corpus {cfg['corpus']}, architectures {', '.join(cfg['architectures'])}, "
          f"preset {cfg['preset']}, store {cfg['store']}")
    started = time.time()
    run = training.build_pipeline(cluster=False)(**params)
    registration = run.output if hasattr(run, "output") else run
    print(f"\npipeline finished in {time.time() - started:.0f} s")
    print_results(registration)
    if cfg["deploy_target"] == "local":
        url = f"http://127.0.0.1:{cfg['serve_port']}"
        print(f"\nEndpoint: {url}  (V1 {url}/v1/models/{cfg['model_name']}:predict, "
              f"v2 {url}/v2/models/{cfg['model_name']}/infer; stop with `emoflow serve --stop --port {cfg['serve_port']}`)")
        if not args.no_request:
            demo_request(url, cfg["model_name"], cfg)
    (home() / "last_run.json").write_text(json.dumps(registration, indent=1, default=str))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import kfp

    training = _import_pipelines()
    package = training.compile_pipeline(str(home() / "emoflow-training.yaml"))
    params = json.loads(args.params) if args.params else {}
    client = kfp.Client(host=args.host, namespace=args.namespace)
    run = client.create_run_from_pipeline_package(
        package, arguments=params, experiment_name=args.experiment, run_name=args.run_name, enable_caching=True
    )
    print(f"submitted run {run.run_id} to {args.host}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from emoflow.serving.local import start_local_server, stop_local_server

    if args.stop:
        print("stopped" if stop_local_server(args.port) else f"no emoflow server recorded on port {args.port}")
        return 0
    url = start_local_server(args.model, args.store or store_uri(), host=args.host, port=args.port,
                             model_name=args.model_name)
    print(f"serving {args.model} at {url}/v1/models/{args.model_name}:predict (v2: {url}/v2/models/{args.model_name}/infer)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emoflow.steps import score

    name, _, uri = args.corpus.partition(":")
    if not uri:
        raise SystemExit("emoflow evaluate: --corpus must be <adapter>:<uri>, e.g. ravdess:/data/ravdess")
    result = score(args.model, name, uri, args.store or store_uri(), args.out, transcribe_backend=args.transcribe)
    print(json.dumps(result["summary"], indent=1))
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    from emoflow.serving.deploy import promote_canary, rollback_canary

    action = promote_canary if args.action == "promote" else rollback_canary
    action(args.name, args.namespace)
    print(f"{args.action}d the canary of InferenceService {args.namespace}/{args.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the training pipeline locally (kfp.local) and serve the winner")
    p.add_argument("--config", help="YAML with pipeline parameters (see benchmarks/*.yaml)")
    p.add_argument("--corpus")
    p.add_argument("--source")
    p.add_argument("--architectures", help="comma-separated, e.g. a1,a2")
    p.add_argument("--preset")
    p.add_argument("--epochs", type=int)
    p.add_argument("--fold-scheme", dest="fold_scheme")
    p.add_argument("--n-folds", dest="n_folds", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--transcribe", dest="transcribe_backend")
    p.add_argument("--deploy", dest="deploy_target", choices=["local", "none"])
    p.add_argument("--port", dest="serve_port", type=int)
    p.add_argument("--fan-out-folds", dest="fan_out_folds", action="store_true", default=None,
                   help="one training task per fold (as a cluster runs them in parallel)")
    p.add_argument("--store")
    p.add_argument("--no-request", action="store_true", help="skip the final HTTP request")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="write the pipeline YAML for the Kubeflow UI")
    p.add_argument("-o", "--output", default="emoflow-training.yaml")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("submit", help="upload and run the pipeline on Kubeflow")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    p.add_argument("--namespace", default=None)
    p.add_argument("--experiment", default="emoflow")
    p.add_argument("--run-name", default=None)
    p.add_argument("--params", default=None, help='JSON pipeline parameters, e.g. \'{"corpus": "iemocap"}\'')
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("serve", help="start the predictor for a registered model on this machine")
    p.add_argument("--model", default="emoflow@production", help="name@alias, name@version or a model folder")
    p.add_argument("--model-name", default="emoflow")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--store")
    p.add_argument("--stop", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("evaluate", help="score a registered model on another labelled corpus")
    p.add_argument("--model", required=True, help="registry reference, e.g. emoflow@production")
    p.add_argument("--corpus", required=True, help="<adapter>:<uri>, e.g. ravdess:/data/ravdess")
    p.add_argument("--store")
    p.add_argument("--out", default="evaluation")
    p.add_argument("--transcribe", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("canary", help="promote or roll back the canary revision of the InferenceService")
    p.add_argument("action", choices=["promote", "rollback"])
    p.add_argument("--name", default="emoflow")
    p.add_argument("--namespace", default="emoflow")
    p.set_defaults(func=cmd_canary)

    for module in ("emoflow.registry.cli", "emoflow.text.encoders", "emoflow.monitoring.cli", "emoflow.assets"):
        try:
            mod = __import__(module, fromlist=["add_cli"])
        except ImportError as exc:
            logging.getLogger("emoflow").debug("CLI module %s not available: %s", module, exc)
            continue
        mod.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
