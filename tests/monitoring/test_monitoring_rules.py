"""Prometheus rules: generator agreement, promtool check/test, alert coverage, dashboard metric names."""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import numpy as np

from emoflow.monitoring import drift, rules
from emoflow.monitoring.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "manifests" / "prometheus"
DASHBOARD = REPO / "manifests" / "grafana" / "emoflow-dashboard.json"
# KServe 0.21 kserve/metrics.py: Histogram("request_predict_seconds", ..., ["model_name"])
KSERVE_METRICS = {"request_predict_seconds_bucket", "request_predict_seconds_sum", "request_predict_seconds_count"}
# counted by the serving layer for every HTTP response (agreed interface, /work INTERFACES: route, code_class)
HTTP_METRICS = {"emoflow_http_responses_total"}
# Prometheus' own per-target series
PROMETHEUS_SERIES = {"up", "ALERTS"}


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
    return names | KSERVE_METRICS | HTTP_METRICS | PROMETHEUS_SERIES | set(rules.recorded_names())


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
    assert set(rules.alert_names()) == {"EmotionDistributionDrift", "EmotionShareShift", "PredictorMetricsAbsent",
                                        "PredictorNoTraffic", "PredictorServerErrorRatioHigh",
                                        "PredictorClientErrorRatioHigh", "PredictorLatencyP99High"}


def test_check_detects_stale_file(tmp_path):
    rules.write(tmp_path)
    assert rules.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "rules.yml").write_text((tmp_path / "rules.yml").read_text().replace("4.75", "5.5"))
    assert rules.main(["--check", "--out", str(tmp_path)]) == 1


def test_overrides_and_bad_parameters():
    groups = rules.rule_groups(drift_window="20s", drift_for="5s", error_window="1m", error_min_requests=7)
    text = yaml.safe_dump(groups)
    assert "emoflow:drift_psi:increase20s" in text and "increase(emoflow_predictions_total[20s])" in text
    assert "emoflow:http_requests:rate1m * 60 >= 7" in text
    with pytest.raises(ValueError, match="unknown rule parameters"):
        rules.rule_groups(psi_treshold=0.2)
    with pytest.raises(ValueError, match="drift_for must be a positive Prometheus duration"):
        rules.rule_groups(drift_for="15 minutes")


def test_drift_alerts_are_quick_and_read_the_shared_statistics():
    # issue 15 item 8: the drift alerts read the statistics of emoflow.monitoring.drift (the same
    # formulas as the in-process gauges), in the group that records them, with a short `for:`
    groups = {g["name"]: g["rules"] for g in rules.rule_groups()}
    drift_group = groups["emoflow.drift"]
    recorded = [r["record"] for r in drift_group if "record" in r]
    series = rules.drift_series(drift.DEFAULT_WINDOW)
    assert [series[s.name] for s in drift.STATISTICS] == recorded[-len(drift.STATISTICS):]
    alerts = {r["alert"]: r for r in drift_group if "alert" in r}
    assert set(alerts) == {"EmotionDistributionDrift", "EmotionShareShift"}
    assert series["g_zscore"] in alerts["EmotionDistributionDrift"]["expr"]
    for alert in alerts.values():
        assert rules.duration_seconds(alert["for"]) <= 60
    assert rules.DEFAULTS["drift_window"] == drift.DEFAULT_WINDOW  # the gauges' window


def test_promtool_check_rules():
    out = subprocess.run([promtool(), "check", "rules", str(PROM / "rules.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules.rule_groups())} rules found" in out.stdout


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
    # same tests against rules with a score threshold the shift never reaches: the drift test must fail
    rules.write(tmp_path, zscore_threshold=50)
    (tmp_path / "tests").mkdir()
    shutil.copy(PROM / "tests" / "drift_test.yml", tmp_path / "tests" / "drift_test.yml")
    out = subprocess.run([promtool(), "test", "rules", "tests/drift_test.yml"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode != 0 and "EmotionDistributionDrift" in out.stdout + out.stderr


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "rate", "irate", "increase", "histogram_quantile", "clamp_min", "clamp_max", "ln", "abs", "and", "or",
    "unless", "bool", "label_values", "vector", "offset", "round", "log2", "sqrt", "absent", "label_replace",
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
    for word in ("emotion", "reference", "psi", "g-test", "latency", "errors", "modality"):
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


# ---------------------------------------------------------------------------------------------
# one definition: the in-process statistics equal the recording rules on the same counts
# ---------------------------------------------------------------------------------------------

REFERENCES = {
    "emo": {"neutral": 0.4, "happy": 0.3, "sad": 0.2, "angry": 0.1, "fear": 0.0},
    "rav": {"neutral": 1 / 15, **{e: 2 / 15 for e in ("calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")}},
}


def test_gauges_equal_recording_rules_on_the_same_counts(tmp_path):
    """Random per-minute counts of two replicas (replica b restarts at 25m) go (a) into DriftWindow
    through PredictionMetrics, whose gauges are read, and (b) into promtool as counter series; at
    30m every recording rule of every statistic equals its gauge (relative 1e-9)."""
    from prometheus_client import CollectorRegistry

    from emoflow.monitoring.metrics import PredictionMetrics

    rng = np.random.default_rng(11)
    clock = type("Clock", (), {"t": 0.0, "__call__": lambda self: self.t})()
    reg = CollectorRegistry()
    metrics = PredictionMetrics(reg, window="10m", clock=clock)
    series, minutes, reset_at, per_minute = [], 30, 25, {}
    for model, ref in REFERENCES.items():
        metrics.set_reference(model, "v1", ref)
        emotions = list(ref)
        # traffic drifts away from the reference; "fear" (reference 0) and "angry" get nothing
        traffic = np.array([0.0 if e in ("fear", "angry") else 1.0 + i for i, e in enumerate(emotions)])
        per_minute[model] = {pod: rng.multinomial(40, traffic / traffic.sum(), size=minutes) for pod in "ab"}
        for pod in "ab":
            for j, e in enumerate(emotions):
                inc = per_minute[model][pod][:, j]
                values = [0] + list(np.cumsum(inc))
                if pod == "b":  # restart: the counter starts again from the predictions after it
                    values = values[:reset_at + 1] + list(np.cumsum(inc[reset_at:]))
                labels = f'model="{model}",version="v1",emotion="{e}",pod="{pod}"'
                series.append({"series": f"emoflow_predictions_total{{{labels}}}", "values": " ".join(map(str, values))})
                series.append({"series": f"emoflow_reference_share{{{labels}}}", "values": f"{ref[e]!r}x{minutes}"})
    for k in range(1, minutes + 1):
        clock.t = 60 * k - 1  # the predictions of minute k, before its scrape at 60 k
        for model, ref in REFERENCES.items():
            for pod in "ab":
                for e, c in zip(ref, per_minute[model][pod][k - 1]):
                    for _ in range(int(c)):
                        metrics.observe(model, "v1", e, 0.9, "audio+text")
    clock.t = 60 * minutes
    names = rules.drift_series(drift.DEFAULT_WINDOW)
    checks = []
    for model, ref in REFERENCES.items():
        stats = metrics.drift(model, "v1")
        assert stats is not None and stats.count == 2 * 40 * 10
        for stat in drift.STATISTICS:
            gauge = metrics.drift_gauges[stat.name]
            for emotion in (ref if stat.per_emotion else [None]):
                labels = {"model": model, "version": "v1", **({"emotion": emotion} if emotion else {})}
                want = reg.get_sample_value(f"emoflow_drift_{stat.name}", labels)
                assert want == stats.value(stat.name, emotion) and gauge is not None and math.isfinite(want)
                selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
                checks.append({
                    "expr": f"abs({names[stat.name]}{{{selector}}} - {want!r}) <= bool {1e-9 * max(1.0, abs(want))!r}",
                    "eval_time": f"{minutes}m",
                    "exp_samples": [{"labels": "{" + selector + "}", "value": 1}],
                })
    (tmp_path / "rules.yml").write_text(rules.render_rules_file())
    (tmp_path / "equal_test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
    }))
    out = subprocess.run([promtool(), "test", "rules", "equal_test.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert len(checks) == sum(len(r) * 2 + 4 for r in REFERENCES.values())
