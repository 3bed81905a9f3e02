"""`emoflow schedule` and `emoflow retrain-webhook` subcommands.

The main CLI calls ``add_cli(subparsers)``; each subcommand sets ``func`` (called with the parsed
args, returns an exit code).
"""

from __future__ import annotations

import argparse

from emoflow import runconfig


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"duration must be seconds or like 30m, 6h, 1d; got {text!r}") from None


def add_kfp_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and as whom runs are created: shared by `submit`, `schedule` and `retrain-webhook`."""
    parser.add_argument("--host", default=None,
                        help="KFP API endpoint (default: kfp.Client's: in a pod, the in-cluster ml-pipeline "
                             "service in namespace kubeflow; else the kubeconfig's)")
    parser.add_argument("--namespace", default=None,
                        help="namespace the run goes to: the Kubeflow profile namespace with multi-user KFP "
                             "(default: the client's; standalone KFP runs in its own namespace)")
    parser.add_argument("--service-account", default=None,
                        help="Kubernetes ServiceAccount of the run's pods (default: KFP's, e.g. pipeline-runner "
                             "or default-editor); it needs the emoflow-s3 Secret and InferenceService rights")
    parser.add_argument("--kfp-token-file", default=None, metavar="PATH",
                        help="bearer token for the KFP API, re-read on every request (a projected "
                             "ServiceAccount token, audience pipelines.kubeflow.org, e.g. "
                             "/var/run/secrets/kubeflow/pipelines/token)")
    parser.add_argument("--experiment", default="emoflow", help="KFP experiment (default emoflow)")


class _LazyClient:
    """kfp.Client created on first use (its constructor calls the API server), so the webhook
    starts while KFP is unreachable; a failed creation is retried on the next submission."""

    def __init__(self, host: str | None, token_file: str | None):
        self.host, self.token_file, self._client = host, token_file, None

    def __getattr__(self, name):
        if self._client is None:
            from emoflow.monitoring.schedule import kfp_client

            self._client = kfp_client(self.host, token_file=self.token_file)
        return getattr(self._client, name)


def _cmd_schedule(args) -> int:
    from emoflow.monitoring.schedule import create_schedule, kfp_client, retrain_params

    params = retrain_params(runconfig.given(args.config, args.param))  # refuse before calling KFP
    run = create_schedule(kfp_client(args.host, token_file=args.kfp_token_file), args.pipeline, args.cron,
                          experiment=args.experiment, job_name=args.job_name, params=params,
                          namespace=args.namespace, service_account=args.service_account)
    rid = getattr(run, "recurring_run_id", None) or getattr(run, "id", None)
    print(f"recurring run {args.job_name} created (id {rid}): cron '{args.cron}' UTC, "
          f"no_catchup=True, max_concurrency=1, corpus {params['corpus']} from {params['source']}")
    return 0


def _cmd_webhook(args) -> int:
    from emoflow.monitoring.webhook import RetrainTrigger, create_app, kfp_submitter, load_token, serve

    token = load_token(args.token_file)
    params = runconfig.given(args.config, args.param)
    submit = kfp_submitter(_LazyClient(args.host, args.kfp_token_file), args.pipeline, experiment=args.experiment,
                           params=params, namespace=args.namespace, service_account=args.service_account)
    trigger = RetrainTrigger(submit, alertnames=tuple(args.alertname or ["EmotionDistributionDrift"]),
                             cooldown_s=args.cooldown, state_path=args.state_file)
    print(f"retrain webhook on http://{args.bind}:{args.port}/alerts "
          f"(alerts {sorted(trigger.alertnames)}, cool-down {args.cooldown:g} s, "
          f"corpus {params['corpus']} from {params['source']})")
    serve(create_app(trigger, token), host=args.bind, port=args.port)
    return 0


def add_cli(subparsers) -> None:
    """Add the `schedule` and `retrain-webhook` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("schedule", help="create a KFP recurring run of the training pipeline",
                              description="Create a KFP recurring run (6-field cron with seconds, UTC, "
                                          "no_catchup=True, max_concurrency=1). The run's parameters are "
                                          "required (--config / --param, with corpus and source).")
    add_kfp_arguments(p)
    p.add_argument("--pipeline", required=True, help="compiled pipeline YAML (emoflow compile)")
    p.add_argument("--cron", required=True, help="6 fields, seconds first, UTC: e.g. '0 0 3 * * *'")
    p.add_argument("--job-name", default="emoflow-retrain")
    runconfig.add_source_arguments(p)
    p.set_defaults(func=_cmd_schedule)

    w = subparsers.add_parser("retrain-webhook", help="Alertmanager webhook that starts a training run on drift",
                              description="Serve an Alertmanager webhook receiver; one training run per drift "
                                          "episode. The run's parameters are required (--config / --param, "
                                          "with corpus and source). In a container: --bind 0.0.0.0.")
    add_kfp_arguments(w)
    w.add_argument("--pipeline", required=True, help="compiled pipeline YAML (emoflow compile)")
    runconfig.add_source_arguments(w)
    w.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; in a container 0.0.0.0)")
    w.add_argument("--port", type=int, default=9095)
    w.add_argument("--token-file", default=None,
                   help="file holding the shared bearer token Alertmanager sends (default: $EMOFLOW_WEBHOOK_TOKEN)")
    w.add_argument("--cooldown", type=_duration, default=6 * 3600.0,
                   help="minimum time between two runs for one model (seconds or 30m/6h/1d; default 6h)")
    w.add_argument("--alertname", action="append", default=None,
                   help="alert name that triggers retraining; repeatable (default EmotionDistributionDrift)")
    w.add_argument("--state-file", default=None, help="JSON file keeping episodes across restarts")
    w.set_defaults(func=_cmd_webhook)
