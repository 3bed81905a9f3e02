"""`emoflow schedule` and `emoflow retrain-webhook` subcommands.

The main CLI calls ``add_cli(subparsers)``; each subcommand sets ``func`` (called with the parsed
args, returns an exit code).
"""

from __future__ import annotations

import argparse
import json


def _param(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param must be KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)  # numbers, booleans, lists; anything else stays a string
    except json.JSONDecodeError:
        value = raw
    return key, value


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"duration must be seconds or like 30m, 6h, 1d; got {text!r}") from None


def _client(host: str | None):
    import kfp

    return kfp.Client(host=host)


class _LazyClient:
    """kfp.Client created on first use (its constructor calls the API server), so the webhook
    starts while KFP is unreachable; a failed creation is retried on the next submission."""

    def __init__(self, host: str | None):
        self.host, self._client = host, None

    def __getattr__(self, name):
        if self._client is None:
            self._client = _client(self.host)
        return getattr(self._client, name)


def _cmd_schedule(args) -> int:
    from emoflow.monitoring.schedule import create_schedule

    run = create_schedule(_client(args.host), args.pipeline, args.cron, experiment=args.experiment,
                          job_name=args.job_name, params=dict(args.param), namespace=args.namespace)
    rid = getattr(run, "recurring_run_id", None) or getattr(run, "id", None)
    print(f"recurring run {args.job_name} created (id {rid}): cron '{args.cron}' UTC, "
          "no_catchup=True, max_concurrency=1")
    return 0


def _cmd_webhook(args) -> int:
    from emoflow.monitoring.webhook import RetrainTrigger, create_app, kfp_submitter, load_token, serve

    token = load_token(args.token_file)
    submit = kfp_submitter(_LazyClient(args.host), args.pipeline, experiment=args.experiment,
                           params=dict(args.param))
    trigger = RetrainTrigger(submit, alertnames=tuple(args.alertname or ["EmotionDistributionDrift"]),
                             cooldown_s=args.cooldown, state_path=args.state_file)
    print(f"retrain webhook on http://{args.bind}:{args.port}/alerts "
          f"(alerts {sorted(trigger.alertnames)}, cool-down {args.cooldown:g} s)")
    serve(create_app(trigger, token), host=args.bind, port=args.port)
    return 0


def add_cli(subparsers) -> None:
    """Add the `schedule` and `retrain-webhook` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("schedule", help="create a KFP recurring run of the training pipeline",
                              description="Create a KFP recurring run (6-field cron with seconds, UTC, "
                                          "no_catchup=True, max_concurrency=1).")
    p.add_argument("--host", default=None, help="KFP API endpoint (default: kfp.Client's default)")
    p.add_argument("--pipeline", required=True, help="compiled pipeline YAML (emoflow compile)")
    p.add_argument("--cron", required=True, help="6 fields, seconds first, UTC: e.g. '0 0 3 * * *'")
    p.add_argument("--experiment", default="emoflow")
    p.add_argument("--job-name", default="emoflow-retrain")
    p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user)")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="pipeline parameter (JSON value or string); repeatable")
    p.set_defaults(func=_cmd_schedule)

    w = subparsers.add_parser("retrain-webhook", help="Alertmanager webhook that starts a training run on drift",
                              description="Serve an Alertmanager webhook receiver; one training run per drift episode.")
    w.add_argument("--host", default=None, help="KFP API endpoint (default: kfp.Client's default)")
    w.add_argument("--pipeline", required=True, help="compiled pipeline YAML (emoflow compile)")
    w.add_argument("--experiment", default="emoflow")
    w.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE")
    w.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    w.add_argument("--port", type=int, default=9095)
    w.add_argument("--token-file", default=None,
                   help="file holding the shared bearer token (default: $EMOFLOW_WEBHOOK_TOKEN)")
    w.add_argument("--cooldown", type=_duration, default=6 * 3600.0,
                   help="minimum time between two runs for one model (seconds or 30m/6h/1d; default 6h)")
    w.add_argument("--alertname", action="append", default=None,
                   help="alert name that triggers retraining; repeatable (default EmotionDistributionDrift)")
    w.add_argument("--state-file", default=None, help="JSON file keeping episodes across restarts")
    w.set_defaults(func=_cmd_webhook)
