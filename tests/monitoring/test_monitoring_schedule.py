"""Recurring-run creation with a fake kfp.Client, the CLI wiring, and the promotion policy."""

import argparse
from types import SimpleNamespace

import pytest

from emoflow.monitoring import add_cli, should_promote
from emoflow.monitoring.schedule import create_schedule, validate_cron


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
                          params={"architectures": ["a1"], "epochs": 5})
    assert run.recurring_run_id == "rr-1"
    assert client.experiments == [("emo", None)]
    kw = client.recurring[0]
    assert kw["experiment_id"] == "exp-emo" and kw["job_name"] == "nightly"
    assert kw["cron_expression"] == "0 0 3 * * *"
    assert kw["no_catchup"] is True and kw["max_concurrency"] == 1 and kw["enabled"] is True
    assert kw["pipeline_package_path"] == str(package)
    assert kw["params"] == {"alias": "candidate", "architectures": ["a1"], "epochs": 5}
    assert "UTC" in kw["description"]


@pytest.mark.parametrize("cron, match", [
    ("0 3 * * *", "6 fields .* got 5 .*prepend the seconds field"),
    ("0 0 0 3 * * *", "got 7"),
    ("", "got 0"),
    ("0 0 3 * * $", "day-of-week field '\\$'"),
])
def test_bad_cron_is_refused(cron, match, package):
    with pytest.raises(ValueError, match=match):
        create_schedule(FakeClient(), package, cron)


def test_missing_package_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        create_schedule(FakeClient(), tmp_path / "none.yaml", "0 0 3 * * *")
    assert validate_cron("*/30 * * * * MON-FRI") == "*/30 * * * * MON-FRI"


def test_cli_subcommands(package, monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="emoflow")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["schedule", "--pipeline", str(package), "--cron", "0 0 3 * * *",
                              "--param", "epochs=5", "--param", "corpus=s3://data/iemocap", "--job-name", "n1"])
    client = FakeClient()
    import emoflow.monitoring.cli as cli

    monkeypatch.setattr(cli, "_client", lambda host: client)
    assert args.func(args) == 0
    assert client.recurring[0]["params"] == {"alias": "candidate", "epochs": 5, "corpus": "s3://data/iemocap"}
    assert "rr-1" in capsys.readouterr().out
    w = parser.parse_args(["retrain-webhook", "--pipeline", str(package), "--cooldown", "30m"])
    assert w.bind == "127.0.0.1" and w.cooldown == 1800 and w.alertname is None
    with pytest.raises(SystemExit):
        parser.parse_args(["schedule", "--pipeline", "x", "--cron", "0 0 3 * * *", "--param", "novalue"])


def test_webhook_cli_refuses_to_start_without_token(package, monkeypatch):
    parser = argparse.ArgumentParser(prog="emoflow")
    add_cli(parser.add_subparsers(dest="command"))
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
    from emoflow.monitoring.schedule import retrain_params

    assert retrain_params({"epochs": 3}) == {"alias": "candidate", "epochs": 3}
    assert retrain_params({"alias": "production"})["alias"] == "production"
