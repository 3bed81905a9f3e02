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

from emoflow import runconfig
from emoflow.config import home, store_uri

LOCAL_PARALLEL_TASKS = 2  # what kfp.local's SubprocessRunner runs at once
DEMO_CONFIG = "demo"  # the packaged run config `emoflow run` uses when no --config is given


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
    path = training.compile_pipeline(args.output, image_pull_secrets=args.image_pull_secret or None)
    print(f"pipeline written to {path}: upload it in the Kubeflow UI (Pipelines → Upload pipeline)")
    return 0


def _run_config(args: argparse.Namespace) -> dict:
    """The local run's parameters: run-config defaults ← the --config files (else the demo config)
    ← flags. The store is this machine's unless a config or --store names one."""
    configs = args.config or [DEMO_CONFIG]
    layers = [(runconfig.config_path(c).name, runconfig.load(c)) for c in configs]
    cfg, sources = runconfig.layered(*layers, ("flags", runconfig.from_args(args)))
    from emoflow.models.registry import list_archs

    unknown = sorted(set(cfg["architectures"]) - set(list_archs()))
    if unknown:
        raise runconfig.RunConfigError(f"architectures: unknown {unknown}; known: {list_archs()}")
    if sources["store"] == "default":  # the pipeline's default is the cluster's bucket
        cfg["store"], sources["store"] = store_uri(), "local store"
    if cfg["deploy_target"] == "kserve" and sources["deploy_target"] == "default":
        raise SystemExit(f"emoflow run: {', '.join(configs)} does not set deploy_target, and the pipeline default "
                         "(kserve) deploys to a cluster; set `deploy_target: local` or `none` in the config, "
                         "or pass --deploy local|none|kserve")
    print("emoflow run: parameters from " + ", ".join(sorted(set(sources.values()) - {"default"})
                                                      or ["the defaults"]) + " over the defaults")
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
    print(f"emoflow run: corpus {cfg['corpus']}, architectures {', '.join(cfg['architectures'])}, "
          f"preset {cfg['preset']}, epochs {cfg['epochs'] or 'of the preset'}, store {cfg['store']}, "
          f"deploy {cfg['deploy_target']}")
    started = time.time()
    from emoflow import work

    # each task (a subprocess) records the work it did and what it reused here
    os.environ[work.LOG_ENV] = str(root / "work" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}")
    run = training.build_pipeline(cluster=False)(**cfg)
    registration = run.output if hasattr(run, "output") else run
    print(f"\npipeline finished in {time.time() - started:.0f} s; {work.describe(work.total(os.environ[work.LOG_ENV]))}")
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
    from emoflow.monitoring.schedule import kfp_client

    training = _import_pipelines()
    params = runconfig.given(args.config, args.param)
    if args.params:
        try:
            given = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise runconfig.RunConfigError(f"--params is not a JSON object: {exc}") from None
        params.update(runconfig.validate(given, "--params"))
    # task pods get the image pull secrets compiled in: compile with the run's own list
    package = training.compile_pipeline(str(home() / "emoflow-training.yaml"),
                                        image_pull_secrets=params.get("image_pull_secrets"))
    client = kfp_client(args.host, token_file=args.kfp_token_file)
    run = client.create_run_from_pipeline_package(
        package, arguments=params, experiment_name=args.experiment, run_name=args.run_name, enable_caching=True,
        namespace=args.namespace, service_account=args.service_account,
    )
    print(f"submitted run {run.run_id} to {args.host or 'the in-cluster KFP API'}"
          + (f" in namespace {args.namespace}" if args.namespace else ""))
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

    p = sub.add_parser(
        "run", help="run the training pipeline locally (kfp.local) and serve the winner",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the training pipeline on this machine (kfp.local).\n\n"
        "Parameters, later layers winning: the run-config defaults (the pipeline's, for a cluster) <- the "
        f"--config files, or without one the demo config {runconfig.CONFIG_DIR / (DEMO_CONFIG + '.yaml')} "
        "<- the flags below. A config is a YAML mapping of the parameter names below "
        "(e.g. benchmarks/configs/*.yaml); unknown keys are refused.")
    p.add_argument("--config", action="append", default=[], metavar="RUN.yaml",
                   help="run-config YAML; repeatable, later files win; a bare name means "
                        f"{runconfig.CONFIG_DIR}/<name>.yaml (default: {DEMO_CONFIG})")
    p.add_argument("--no-request", action="store_true", help="skip the final HTTP request to the served model")
    runconfig.add_arguments(p, (f"{DEMO_CONFIG}.yaml", runconfig.load(DEMO_CONFIG)))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="write the pipeline YAML for the Kubeflow UI")
    p.add_argument("-o", "--output", default="emoflow-training.yaml")
    p.add_argument("--image-pull-secret", action="append", default=[], metavar="SECRET",
                   help="image pull Secret set on every task pod and the default of the image_pull_secrets "
                        f"parameter; repeatable (default ${runconfig.PULL_SECRETS_ENV}, comma-separated)")
    p.set_defaults(func=cmd_compile)

    from emoflow.monitoring.cli import add_kfp_arguments

    p = sub.add_parser("submit", help="upload and run the pipeline on Kubeflow")
    add_kfp_arguments(p)
    p.add_argument("--run-name", default=None)
    runconfig.add_source_arguments(p)
    p.add_argument("--params", default=None,
                   help='run parameters as one JSON object, e.g. \'{"corpus": "iemocap"}\' (wins over --param)')
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

    for module in ("emoflow.registry.cli", "emoflow.text.encoders", "emoflow.monitoring.cli", "emoflow.assets",
                   "emoflow.doctor", "emoflow.training.speaker"):
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
    try:
        return int(args.func(args) or 0)
    except runconfig.RunConfigError as exc:
        parser.exit(2, f"emoflow {args.command}: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
