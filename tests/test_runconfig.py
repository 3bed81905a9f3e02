"""The run configuration: one declaration of every run parameter, read by the pipeline, the CLI
flags and the YAML configs (the pipeline side is tested on the compiled YAML in tests/pipelines)."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from emoflow import cli, runconfig
from emoflow.runconfig import RunConfigError

REPO = Path(__file__).resolve().parents[1]
BENCH_CONFIGS = sorted((REPO / "benchmarks" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda p: p.name)
def test_every_benchmark_config_is_a_valid_run_config(path):
    values = runconfig.load(path)
    assert values["corpus"] and values["deploy_target"] in ("none", "local")


def test_benchmark_configs_exist():
    assert len(BENCH_CONFIGS) >= 6


def test_the_demo_choices_live_in_the_packaged_demo_config():
    assert not hasattr(cli, "RUN_DEFAULTS")
    demo = runconfig.load("demo")
    assert runconfig.config_path("demo") == runconfig.CONFIG_DIR / "demo.yaml"
    assert (demo["preset"], demo["epochs"], demo["deploy_target"]) == ("demo", 4, "local")
    # the run config's own defaults are the cluster's
    defaults = runconfig.defaults()
    assert (defaults["preset"], defaults["epochs"], defaults["deploy_target"]) == ("tiny", 0, "kserve")


def run_config(*argv):
    return cli._run_config(cli.build_parser().parse_args(["run", *argv]))


def test_emoflow_run_layers_defaults_demo_or_configs_then_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOFLOW_STORE", "file:///tmp/emoflow-test-store")
    cfg = run_config()
    assert (cfg["preset"], cfg["epochs"], cfg["deploy_target"]) == ("demo", 4, "local")
    assert cfg["store"] == "file:///tmp/emoflow-test-store"  # this machine's store, not s3://emoflow
    assert cfg["gpu_count"] == "1" and cfg["model_name"] == "emoflow"  # untouched defaults
    assert "demo.yaml" in capsys.readouterr().out
    mine = tmp_path / "mine.yaml"
    mine.write_text("corpus: ravdess\nsource: /data/ravdess\npreset: offline\ndeploy_target: none\n"
                    "store: s3://bench\n")
    cfg = run_config("--config", str(mine), "--epochs", "7", "--architectures", "a2,a3", "--fan-out-folds")
    assert (cfg["corpus"], cfg["preset"], cfg["epochs"], cfg["deploy_target"]) == ("ravdess", "offline", 7, "none")
    assert cfg["architectures"] == ["a2", "a3"] and cfg["fan_out_folds"] is True and cfg["store"] == "s3://bench"
    # a config given replaces the demo one; several configs layer in order
    cfg = run_config("--config", "demo", "--config", str(mine))
    assert (cfg["preset"], cfg["epochs"]) == ("offline", 4)


def test_emoflow_run_refuses_a_cluster_deploy_nobody_asked_for(tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("corpus: demo\nepochs: 1\n")
    with pytest.raises(SystemExit, match="does not set deploy_target.*kserve.*deploy_target: local"):
        run_config("--config", str(partial))
    assert run_config("--config", str(partial), "--deploy", "none")["deploy_target"] == "none"


@pytest.mark.parametrize("text, message", [
    ("corpus: demo\nepoch: 3\n", r"bad.yaml: unknown run parameter 'epoch' \(did you mean 'epochs'\?\)"),
    ("epochs: three\n", "bad.yaml: epochs must be an integer, got str 'three'"),
    ("fan_out_folds: 1\n", "fan_out_folds must be a boolean, got int"),
    ("architectures: [a1, A-9]\n", "architectures: not architecture names"),
    ("fold_scheme: kfold\n", r"fold_scheme: 'kfold' is not one of \['logo', 'speaker_groups', 'official'\]"),
    ("gpu_count: two\n", "gpu_count: must be a non-negative whole number"),
    ("image_pull_secrets: [Reg_Cred]\n", "image_pull_secrets: 'Reg_Cred' is not a Secret name"),
    ("- corpus\n", "must be a mapping of parameter: value"),
    ("corpus: [\n", "not valid YAML"),
])
def test_bad_configs_are_refused_naming_the_key(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RunConfigError, match=message):
        runconfig.load(bad)
    with pytest.raises(SystemExit) as exc:  # the CLI reports it and exits 2
        cli.main(["run", "--config", str(bad)])
    assert exc.value.code == 2


def test_values_are_read_in_the_parameters_type():
    assert runconfig.validate({"gpu_count": 2, "promote_margin": 1}) == {"gpu_count": "2", "promote_margin": 1.0}
    assert runconfig.parse_pairs(["architectures=a1, a2", "tolerations=[]", "fan_out_folds=true",
                                  "node_selector={\"pool\": \"gpu\"}", "gpu_count=4"]) == {
        "architectures": ["a1", "a2"], "tolerations": [], "fan_out_folds": True,
        "node_selector": {"pool": "gpu"}, "gpu_count": "4"}
    with pytest.raises(RunConfigError, match="node_selector must be a mapping \\(a JSON object\\)"):
        runconfig.parse_pairs(["node_selector=pool"])
    with pytest.raises(RunConfigError, match="--param: unknown run parameter 'gpus'"):
        runconfig.parse_pairs(["gpus=1"])
    with pytest.raises(RunConfigError, match="--param must be KEY=VALUE"):
        runconfig.parse_pairs(["gpu_count"])


def test_compile_time_defaults_follow_the_image_settings(monkeypatch):
    monkeypatch.setenv("EMOFLOW_IMAGE_REGISTRY", "reg.example")
    monkeypatch.setenv("EMOFLOW_IMAGE_TAG", "1.2.3")
    monkeypatch.setenv(runconfig.PULL_SECRETS_ENV, "regcred, other")
    defaults = runconfig.defaults()
    assert defaults["serving_image"] == "reg.example/emoflow-serve-gpu:1.2.3"
    assert defaults["image_pull_secrets"] == ["regcred", "other"]


def test_choices_agree_with_the_library():
    from emoflow.corpora import ADAPTERS
    from emoflow.evaluation.folds import SCHEMES
    from emoflow.models.registry import list_archs
    from emoflow.text.transcribe import BACKENDS

    by = runconfig.BY_NAME
    assert set(by["corpus"].choices) == set(ADAPTERS)
    assert by["fold_scheme"].choices == SCHEMES
    assert by["transcribe_backend"].choices == BACKENDS
    assert by["architectures"].validate(list_archs()) == list_archs()  # every discovered one passes
    with pytest.raises(runconfig.RunConfigError, match="architectures"):
        by["architectures"].validate(["A1; rm"])
    with pytest.raises(runconfig.RunConfigError, match="architectures"):
        by["architectures"].validate([])


def test_run_refuses_an_unknown_architecture_naming_it(capsys):
    from emoflow.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--architectures", "a1,zz9", "--deploy", "none"])
    assert exc.value.code == 2
    assert "zz9" in capsys.readouterr().err


def test_run_help_shows_every_flag_with_help_and_the_config_folder():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    for p in runconfig.PARAMS:
        assert f"{p.cli_flag} " in text, p.name
        assert " ".join(p.help.split()) in text, p.name
    assert str(runconfig.CONFIG_DIR) in text and (runconfig.CONFIG_DIR / "demo.yaml").is_file()
    table = runconfig.markdown_table()
    assert all(f"| `{p.name}` | `{p.cli_flag}` |" in table for p in runconfig.PARAMS)


def test_submit_passes_namespace_service_account_and_the_validated_parameters(tmp_path, monkeypatch, capsys):
    import emoflow.monitoring.schedule as schedule

    monkeypatch.setenv("EMOFLOW_HOME", str(tmp_path))
    calls = []

    class FakeClient:
        def create_run_from_pipeline_package(self, package, **kw):
            calls.append((package, kw))
            return SimpleNamespace(run_id="run-1")

    monkeypatch.setattr(schedule, "kfp_client", lambda host, token_file=None: FakeClient())
    run = tmp_path / "run.yaml"
    run.write_text("corpus: iemocap\nsource: s3://corpora/iemocap\nimage_pull_secrets: [regcred]\n")
    assert cli.main(["submit", "--host", "http://127.0.0.1:9", "--config", str(run), "--param", "gpu_count=2",
                     "--namespace", "team-a", "--service-account", "emoflow-runner"]) == 0
    package, kw = calls[0]
    assert kw["arguments"] == {"corpus": "iemocap", "source": "s3://corpora/iemocap",
                               "image_pull_secrets": ["regcred"], "gpu_count": "2"}
    assert (kw["namespace"], kw["service_account"]) == ("team-a", "emoflow-runner")
    # the task pods get the run's pull secrets: they are compiled in
    k8s = list(yaml.safe_load_all(Path(package).read_text()))[1]["platforms"]["kubernetes"]
    pulls = {e: [s["secretName"] for s in c.get("imagePullSecret", [])]
             for e, c in k8s["deploymentSpec"]["executors"].items()}
    assert set(map(tuple, pulls.values())) == {("regcred",)}
    for bad, message in (('{"gpu_count": "x"}', "--params: gpu_count: must be a non-negative whole number"),
                         ("{corpus: x}", "--params is not a JSON object")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["submit", "--host", "http://127.0.0.1:9", "--params", bad])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_readme_table_lists_every_parameter_once():
    rows = [r for r in runconfig.markdown_table().splitlines()[2:]]
    assert [re.match(r"\| `(\w+)`", r).group(1) for r in rows] == runconfig.names()
