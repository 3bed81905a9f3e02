"""Recurring-run creation with a fake kfp.Client, the CLI wiring, KFP authentication with the real
kfp.Client against a KFP API stand-in on 127.0.0.1, and the promotion policy."""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from emoflow.monitoring import add_cli, should_promote
from emoflow.monitoring.schedule import create_schedule, kfp_client, retrain_params, validate_cron
from emoflow.runconfig import RunConfigError

DATA = {"corpus": "iemocap", "source": "s3://corpora/iemocap"}


class FakeClient:
    def __init__(self):
        self.experiments, self.recurring = [], []

    def create_experiment(self, name, description=None, namespace=None):
        self.experiments.append((name, namespace))
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def create_recurring_run(self, **kw):
        self.recurring.append(kw)
        return SimpleNamespace(recurring_run_id="rr-1")


@pytest.fixture()
def package(tmp_path):
    p = tmp_path / "pipeline.yaml"
    p.write_text("pipelineSpec: {}\n")
    return p


def test_create_schedule_arguments(package):
    client = FakeClient()
    run = create_schedule(client, package, "0  0 3 * * *", experiment="emo", job_name="nightly",
                          params={"architectures": ["a1"], "epochs": 5, **DATA}, namespace="team-a",
                          service_account="emoflow-runner")
    assert run.recurring_run_id == "rr-1"
    assert client.experiments == [("emo", "team-a")]
    kw = client.recurring[0]
    assert kw["experiment_id"] == "exp-emo" and kw["job_name"] == "nightly"
    assert kw["cron_expression"] == "0 0 3 * * *"
    assert kw["no_catchup"] is True and kw["max_concurrency"] == 1 and kw["enabled"] is True
    assert kw["pipeline_package_path"] == str(package)
    assert kw["params"] == {"alias": "candidate", "architectures": ["a1"], "epochs": 5, **DATA}
    assert kw["service_account"] == "emoflow-runner"
    assert "UTC" in kw["description"]


@pytest.mark.parametrize("cron, match", [
    ("0 3 * * *", "6 fields .* got 5 .*prepend the seconds field"),
    ("0 0 0 3 * * *", "got 7"),
    ("", "got 0"),
    ("0 0 3 * * $", "day-of-week field '\\$'"),
])
def test_bad_cron_is_refused(cron, match, package):
    with pytest.raises(ValueError, match=match):
        create_schedule(FakeClient(), package, cron, params=DATA)


def test_missing_package_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        create_schedule(FakeClient(), tmp_path / "none.yaml", "0 0 3 * * *", params=DATA)
    assert validate_cron("*/30 * * * * MON-FRI") == "*/30 * * * * MON-FRI"


def cli_parser():
    parser = argparse.ArgumentParser(prog="emoflow")
    add_cli(parser.add_subparsers(dest="command"))
    return parser


def test_cli_subcommands(package, tmp_path, monkeypatch, capsys):
    parser = cli_parser()
    run = tmp_path / "run.yaml"
    run.write_text("corpus: iemocap\nsource: s3://corpora/iemocap\nepochs: 3\ngpu_count: 2\n")
    args = parser.parse_args(["schedule", "--pipeline", str(package), "--cron", "0 0 3 * * *",
                              "--config", str(run), "--param", "epochs=5", "--param", "architectures=a1,a2",
                              "--job-name", "n1", "--namespace", "team-a", "--service-account", "emoflow-runner",
                              "--kfp-token-file", "/var/run/secrets/kubeflow/pipelines/token"])
    client = FakeClient()
    import emoflow.monitoring.schedule as schedule

    made = []
    monkeypatch.setattr(schedule, "kfp_client", lambda host, token_file=None: made.append(token_file) or client)
    assert args.func(args) == 0
    assert made == ["/var/run/secrets/kubeflow/pipelines/token"]
    # --param wins over the config; values are typed by the run config (gpu_count is a STRING)
    assert client.recurring[0]["params"] == {"alias": "candidate", "epochs": 5, "architectures": ["a1", "a2"],
                                             "gpu_count": "2", **DATA}
    assert client.recurring[0]["service_account"] == "emoflow-runner"
    assert client.experiments == [("emoflow", "team-a")]
    assert "rr-1" in capsys.readouterr().out
    w = parser.parse_args(["retrain-webhook", "--pipeline", str(package), "--cooldown", "30m"])
    assert w.bind == "127.0.0.1" and w.cooldown == 1800 and w.alertname is None
    for bad in (["--param", "novalue"], ["--param", "epochs=many"], ["--param", "corpuss=x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["schedule", "--pipeline", "x", "--cron", "0 0 3 * * *", *bad])


def test_schedule_and_webhook_refuse_to_start_without_the_runs_data(package, tmp_path, monkeypatch):
    """No silent retraining on the pipeline defaults (corpus=demo): the run's data is required."""
    import emoflow.monitoring.schedule as schedule

    monkeypatch.setattr(schedule, "kfp_client", lambda *a, **k: pytest.fail("KFP contacted"))
    monkeypatch.setenv("EMOFLOW_WEBHOOK_TOKEN", "t" * 32)
    parser = cli_parser()
    for command in (["schedule", "--cron", "0 0 3 * * *"], ["retrain-webhook"]):
        args = parser.parse_args([*command, "--pipeline", str(package), "--param", "epochs=3"])
        with pytest.raises(RunConfigError, match="corpus and source not given .*--config run.yaml"):
            args.func(args)
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: iemocap\nsource: /data\nepoch: 3\n")
    args = parser.parse_args(["schedule", "--cron", "0 0 3 * * *", "--pipeline", str(package), "--config", str(bad)])
    with pytest.raises(RunConfigError, match="bad.yaml: unknown run parameter 'epoch' \\(did you mean 'epochs'"):
        args.func(args)


def test_webhook_cli_wires_the_run_and_kfp_settings(package, monkeypatch):
    import emoflow.monitoring.webhook as webhook

    monkeypatch.setenv("EMOFLOW_WEBHOOK_TOKEN", "t" * 32)
    seen = {}
    monkeypatch.setattr(webhook, "serve", lambda app, host, port: seen.update(host=host, port=port))
    real = webhook.kfp_submitter
    monkeypatch.setattr(webhook, "kfp_submitter", lambda client, path, **kw: seen.update(kw) or real(client, path, **kw))
    args = cli_parser().parse_args(["retrain-webhook", "--pipeline", str(package), "--param", "corpus=meld",
                                    "--param", "source=s3://corpora/meld", "--namespace", "team-a",
                                    "--service-account", "emoflow-runner", "--bind", "0.0.0.0"])
    assert args.func(args) == 0
    assert seen["host"] == "0.0.0.0" and seen["namespace"] == "team-a"
    assert seen["service_account"] == "emoflow-runner" and seen["params"] == {"corpus": "meld",
                                                                              "source": "s3://corpora/meld"}


class _KfpApi(BaseHTTPRequestHandler):
    """Stands in for the KFP API server's healthz route; records the Authorization header."""

    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server API)
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"multi_user": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_kfp_client_sends_the_service_account_token_and_rereads_it(tmp_path):
    """The real kfp 2.17 Client, given --kfp-token-file, authenticates every request with the file's
    current content (projected ServiceAccount tokens are rotated by the kubelet)."""
    token = tmp_path / "token"
    token.write_text("sa-token-1\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = kfp_client(f"http://127.0.0.1:{server.server_port}", token_file=str(token))
        token.write_text("sa-token-2\n")
        client.get_kfp_healthz()
    finally:
        server.shutdown()
        server.server_close()
    assert _KfpApi.seen == [("/apis/v2beta1/healthz", "Bearer sa-token-1"), ("/apis/v2beta1/healthz", "Bearer sa-token-2")]
    with pytest.raises(ValueError, match="KFP token file .* does not exist"):
        kfp_client("http://127.0.0.1:9", token_file=str(tmp_path / "none"))


def test_webhook_cli_refuses_to_start_without_token(package, monkeypatch):
    parser = cli_parser()
    monkeypatch.delenv("EMOFLOW_WEBHOOK_TOKEN", raising=False)
    args = parser.parse_args(["retrain-webhook", "--pipeline", str(package)])
    with pytest.raises(ValueError, match="no webhook token"):
        args.func(args)


def test_should_promote():
    assert should_promote({"ua": 0.70}, None) == (True, "no production model; candidate ua=0.7 promoted")
    ok, why = should_promote({"ua": 0.72}, {"ua": 0.70}, margin=0.01)
    assert ok and "beats production 0.7" in why
    ok, why = should_promote({"ua": 0.705}, {"ua": 0.70}, margin=0.01)
    assert not ok and why.startswith("not promoted") and "margin 0.01" in why
    assert should_promote({"ua": 0.70}, {"ua": 0.70})[0] is False  # a tie keeps production
    assert should_promote({"pooled": {"wf1": 0.6}}, {"pooled": {"wf1": 0.5}}, metric="pooled.wf1")[0]
    with pytest.raises(ValueError, match="candidate metrics have no 'ua'"):
        should_promote({"wa": 0.7}, {"ua": 0.7})
    with pytest.raises(ValueError, match="production metric 'ua' is not a number"):
        should_promote({"ua": 0.7}, {"ua": "n/a"})
    with pytest.raises(ValueError, match="margin"):
        should_promote({"ua": 0.7}, {"ua": 0.6}, margin=-0.1)


def test_retraining_runs_register_a_candidate_by_default():
    assert retrain_params({"epochs": 3, **DATA}) == {"alias": "candidate", "epochs": 3, **DATA}
    assert retrain_params({"alias": "production", **DATA})["alias"] == "production"
    with pytest.raises(RunConfigError, match="alias: 'staging' is not one of"):
        retrain_params({"alias": "staging", **DATA})
