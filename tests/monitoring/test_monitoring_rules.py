"""Prometheus rules: generator agreement, promtool check/test, alert coverage, dashboard metric names."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from emoflow.monitoring import rules
from emoflow.monitoring.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "manifests" / "prometheus"
DASHBOARD = REPO / "manifests" / "grafana" / "emoflow-dashboard.json"
# KServe 0.21 kserve/metrics.py: Histogram("request_predict_seconds", ..., ["model_name"])
KSERVE_METRICS = {"request_predict_seconds_bucket", "request_predict_seconds_sum", "request_predict_seconds_count"}


def promtool():
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool not found: CI must install the Debian package `prometheus` (apt-get install -y prometheus)")
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    return path


def exposed_names():
    names = set()
    for n in METRIC_NAMES:
        names.add(n)
    names |= {"emoflow_prediction_confidence_" + s for s in ("bucket", "sum", "count")}
    return names | KSERVE_METRICS | set(rules.recorded_names()) | {"ALERTS"}


def test_files_on_disk_are_the_rendering():
    assert (PROM / rules.RULES_FILE).read_text() == rules.render_rules_file(), \
        "rules.yml is stale: run python -m emoflow.monitoring.rules"
    assert (PROM / rules.PROMETHEUSRULE_FILE).read_text() == rules.render_prometheus_rule(), \
        "prometheusrule.yaml is stale: run python -m emoflow.monitoring.rules"
    assert rules.main(["--check", "--out", str(PROM)]) == 0


def test_plain_and_operator_rules_agree():
    plain = yaml.safe_load((PROM / "rules.yml").read_text())
    operator = yaml.safe_load((PROM / "prometheusrule.yaml").read_text())
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == plain["groups"]
    assert set(rules.alert_names()) == {"EmotionDistributionDrift", "EmotionShareShift", "PredictorNoTraffic",
                                        "PredictorErrorRatioHigh", "PredictorLatencyP99High"}


def test_check_detects_stale_file(tmp_path):
    rules.write(tmp_path)
    assert rules.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "rules.yml").write_text((tmp_path / "rules.yml").read_text().replace("0.1", "0.3"))
    assert rules.main(["--check", "--out", str(tmp_path)]) == 1


def test_overrides_and_bad_parameters():
    groups = rules.rule_groups(drift_window="20s", drift_for="5s", min_predictions=50)
    text = yaml.safe_dump(groups)
    assert "emoflow:drift_psi:ratio20s" in text and "* 20 >= 50" in text
    with pytest.raises(ValueError, match="unknown rule parameters"):
        rules.rule_groups(psi_treshold=0.2)
    with pytest.raises(ValueError, match="drift_for must be a Prometheus duration"):
        rules.rule_groups(drift_for="15 minutes")


def test_promtool_check_rules():
    out = subprocess.run([promtool(), "check", "rules", str(PROM / "rules.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 15 rules found" in out.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert():
    files = sorted((PROM / "tests").glob("*.yml"))
    assert files
    out = subprocess.run([promtool(), "test", "rules", *map(str, files)], capture_output=True, text=True, cwd=PROM)
    assert out.returncode == 0, out.stdout + out.stderr
    fired, quiet = set(), set()
    for f in files:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert set(rules.alert_names()) <= fired, "every alert needs a firing case"
    assert set(rules.alert_names()) <= quiet, "every alert needs a quiet case"


def test_promtool_unit_tests_can_fail(tmp_path):
    # same tests against rules with a PSI threshold the shift never reaches: the drift test must fail
    rules.write(tmp_path, psi_threshold=0.5)
    (tmp_path / "tests").mkdir()
    shutil.copy(PROM / "tests" / "drift_test.yml", tmp_path / "tests" / "drift_test.yml")
    out = subprocess.run([promtool(), "test", "rules", "tests/drift_test.yml"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode != 0 and "EmotionDistributionDrift" in out.stdout + out.stderr


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "rate", "irate", "increase", "histogram_quantile", "clamp_min", "clamp_max", "ln", "abs", "and", "or",
    "unless", "bool", "label_values", "vector", "offset", "round",
}


def metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression (label matchers, groupings, ranges stripped)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"\1", e)  # Grafana: label_values(metric, label)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e)
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"e\d*", t)}


def test_rule_expressions_use_existing_metrics():
    known = exposed_names()
    for group in rules.rule_groups():
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used, rule
            assert used <= known, f"{rule.get('record') or rule.get('alert')}: unknown {used - known}"


def test_dashboard_json_and_metric_names():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    known = exposed_names()
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("emotion", "reference", "psi", "p-value", "latency", "errors", "modality"):
        assert word in titles, word
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= known, f"{expr}: unknown {used - known}"
    assert metric_names('sum by (emotion) (rate(foo_total{model="$model"}[5m]))') == {"foo_total"}


def test_podmonitor_selects_predictor_metrics():
    pm = yaml.safe_load((PROM / "podmonitor.yaml").read_text())
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert ep["path"] == "/metrics" and ep["port"]
    keys = {e["key"] for e in pm["spec"]["selector"]["matchExpressions"]}
    assert "serving.kserve.io/inferenceservice" in keys


def test_alertmanager_example_routes_drift_to_webhook():
    from emoflow.monitoring.webhook import DEFAULT_ALERTNAMES

    cfg = yaml.safe_load((PROM / "alertmanager-retrain.example.yaml").read_text())
    route = cfg["route"]["routes"][0]
    assert route["matchers"] == [f'alertname = "{DEFAULT_ALERTNAMES[0]}"'] and "model" in route["group_by"]
    hook = next(r for r in cfg["receivers"] if r["name"] == route["receiver"])["webhook_configs"][0]
    assert hook["url"].endswith("/alerts") and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert "credentials_file" in hook["http_config"]["authorization"]  # never an inline secret
