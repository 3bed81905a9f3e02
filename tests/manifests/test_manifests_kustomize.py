"""manifests/: every kustomize target renders offline, core kinds pass ``kubernetes-validate --strict``,
the InferenceService equals what ``build_inference_service`` produces, and the Prometheus Operator
objects use only the operator's field names and really select the predictor pods.

The monitoring files (manifests/prometheus/*.yaml, manifests/grafana/emoflow-dashboard.json) are
written separately; when one is not there yet, a placeholder is put in a temporary copy of
manifests/ for the render (never in the repository).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emoflow import images
from emoflow.serving import deploy as d

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.37.0"  # newest schema set kubernetes-validate 1.37.0 ships
TARGETS = {"gpu": "overlays/gpu", "cpu": "overlays/cpu", "dev-minio": "overlays/dev-minio", "monitoring": "."}
CRD_KINDS = {"InferenceService", "PodMonitor", "ServiceMonitor", "PrometheusRule"}
# Labels KServe puts on predictor pods, plus the ones the InferenceService asks for.
PREDICTOR_POD_LABELS = {"serving.kserve.io/inferenceservice": "emoflow", "component": "predictor",
                        **d.LABELS}

PLACEHOLDERS = {
    "grafana/emoflow-dashboard.json": json.dumps({"title": "placeholder", "panels": [{"type": "timeseries"}]}),
    "prometheus/podmonitor.yaml": """apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: emoflow-predictor}
spec:
  selector:
    matchLabels: {serving.kserve.io/inferenceservice: emoflow}
  podMetricsEndpoints: [{port: http1, path: /metrics, interval: 15s}]
""",
    "prometheus/prometheusrule.yaml": """apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: emoflow}
spec:
  groups:
  - name: placeholder
    rules:
    - {alert: EmoflowNoTraffic, expr: 'absent(emoflow_predictions_total)', for: 10m}
""",
}

# ---- Prometheus Operator (monitoring.coreos.com/v1) field names, from its API types ----
RULE_GROUP_FIELDS = {"name", "labels", "interval", "query_offset", "limit", "partial_response_strategy", "rules"}
RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_SCRAPE_SPEC_COMMON = {
    "jobLabel", "podTargetLabels", "selector", "selectorMechanism", "namespaceSelector", "sampleLimit",
    "targetLimit", "scrapeProtocols", "fallbackScrapeProtocol", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "scrapeClassicHistograms", "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor", "convertClassicHistogramsToNHCB", "keepDroppedTargets",
    "attachMetadata", "scrapeClass", "bodySizeLimit",
}
PODMONITOR_SPEC_FIELDS = _SCRAPE_SPEC_COMMON | {"podMetricsEndpoints"}
SERVICEMONITOR_SPEC_FIELDS = _SCRAPE_SPEC_COMMON | {"endpoints", "targetLabels", "serviceDiscoveryRole"}
_ENDPOINT_COMMON = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels",
    "honorTimestamps", "trackTimestampsStaleness", "metricRelabelings", "relabelings", "filterRunning",
    "authorization", "basicAuth", "oauth2", "bearerTokenSecret", "tlsConfig", "proxyUrl", "noProxy",
    "proxyFromEnvironment", "proxyConnectHeader", "followRedirects", "enableHttp2",
}
POD_METRICS_ENDPOINT_FIELDS = _ENDPOINT_COMMON | {"portNumber"}
SERVICE_ENDPOINT_FIELDS = _ENDPOINT_COMMON | {"bearerTokenFile"}
RELABEL_FIELDS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
LABEL_SELECTOR_FIELDS = {"matchLabels", "matchExpressions"}
MATCH_EXPRESSION_FIELDS = {"key", "operator", "values"}
NAMESPACE_SELECTOR_FIELDS = {"any", "matchNames"}
METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}
DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")


def _copy_with_placeholders(tmp: Path) -> tuple[Path, list[str]]:
    root = tmp / "manifests"
    shutil.copytree(MANIFESTS, root)
    added = []
    for rel, text in PLACEHOLDERS.items():
        if not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
            added.append(rel)
    return root, added


def _kustomize(path: Path) -> list[dict]:
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{target: [objects]} for every kustomize target, rendered with the default image settings."""
    assert KUBECTL, "kubectl is needed to render the manifests (apt package kubectl)"
    root, added = _copy_with_placeholders(tmp_path_factory.mktemp("kustomize"))
    out = {name: _kustomize(root / rel) for name, rel in TARGETS.items()}
    out["_placeholders"] = added
    out["_root"] = root
    return out


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:  # a set-up problem, not a reason to skip
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate==1.37.0")
    return kubernetes_validate


def _by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict], kind: str) -> dict:
    found = _by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture
def default_images(monkeypatch):
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    monkeypatch.delenv(images.TAG_ENV, raising=False)


# --------------------------------------------------------------------------- rendering


def test_every_target_renders_the_expected_kinds(rendered):
    workload = {"Namespace", "ServiceAccount", "Secret", "Role", "RoleBinding", "InferenceService"}
    for name in ("gpu", "cpu"):
        assert {o["kind"] for o in rendered[name]} == workload, name
    assert {o["kind"] for o in rendered["dev-minio"]} == workload | {"Deployment", "PersistentVolumeClaim", "Service"}
    kinds = {o["kind"] for o in rendered["monitoring"]}
    assert kinds >= {"ConfigMap", "PrometheusRule"} and kinds & {"PodMonitor", "ServiceMonitor"}
    for name, objs in rendered.items():
        if name.startswith("_"):
            continue
        for o in objs:
            if o["kind"] != "Namespace":
                assert o["metadata"].get("namespace") == "emoflow", f"{name}: {o['kind']}/{o['metadata']['name']}"
        assert not {o["kind"] for o in objs} & {"ClusterRole", "ClusterRoleBinding"}, name


def test_core_kinds_validate_strictly(rendered, tmp_path):
    kv = _kubernetes_validate()
    core = []
    for name, objs in rendered.items():
        if name.startswith("_"):
            continue
        for o in objs:
            if o["kind"] in CRD_KINDS:
                continue
            try:
                kv.validate(o, K8S_VERSION, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{name}: {o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
            core.append(o)
    # the same through the command line tool, as a platform engineer would run it
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    cli = cli if cli.exists() else Path(shutil.which("kubernetes-validate") or cli)
    proc = subprocess.run([str(cli), "--strict", "--quiet", "-k", K8S_VERSION, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(core) >= 15


def test_strict_validation_rejects_a_typo():
    kv = _kubernetes_validate()
    bad = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "secret": [{"name": "y"}]}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_predictor_pod_fields_validate_as_a_core_pod(rendered):
    """The predictor's containers, nodeSelector and tolerations are pod fields: check them as a Pod."""
    kv = _kubernetes_validate()
    for name in ("gpu", "cpu", "dev-minio"):
        pred = _one(rendered[name], "InferenceService")["spec"]["predictor"]
        pod_fields = {k: v for k, v in pred.items()
                      if k in {"containers", "nodeSelector", "tolerations", "serviceAccountName"}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_fields}
        kv.validate(pod, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- InferenceService


def test_base_file_equals_build_inference_service(default_images):
    text = (MANIFESTS / "base" / "inferenceservice.yaml").read_text()
    assert yaml.safe_load(text) == d.to_manifest(d.default_inference_service(gpu=1)), \
        "regenerate: python -m emoflow.serving.deploy > manifests/base/inferenceservice.yaml (keep the header)"


def test_rendered_isvc_equals_build_inference_service(rendered, default_images):
    assert _one(rendered["gpu"], "InferenceService") == d.to_manifest(d.default_inference_service(gpu=1))
    cpu = d.to_manifest(d.default_inference_service(gpu=0))
    assert _one(rendered["cpu"], "InferenceService") == cpu
    assert _one(rendered["dev-minio"], "InferenceService") == cpu


def test_isvc_fields_match_the_kserve_models(rendered):
    for name in ("gpu", "cpu", "dev-minio"):
        isvc = _one(rendered[name], "InferenceService")
        assert d.unknown_fields(isvc) == [], name


def test_isvc_gpu_and_cpu_field_by_field(rendered, default_images):
    gpu = _one(rendered["gpu"], "InferenceService")["spec"]["predictor"]
    c = gpu["containers"][0]
    assert c["image"] == images.image("serve-gpu")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["nodeSelector"] == d.DEFAULT_GPU_NODE_SELECTOR
    assert gpu["tolerations"] == d.DEFAULT_GPU_TOLERATIONS
    assert gpu["serviceAccountName"] == "emoflow-s3"
    assert {"name": "STORAGE_URI", "value": d.DEFAULT_STORAGE_URI} in c["env"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    cpu = _one(rendered["cpu"], "InferenceService")["spec"]["predictor"]
    assert cpu["containers"][0]["image"] == images.image("serve")
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    assert "nodeSelector" not in cpu and "tolerations" not in cpu


# --------------------------------------------------------------------------- credentials and RBAC


def test_s3_secret_is_a_template_in_kserve_form(rendered):
    for name in ("gpu", "cpu", "dev-minio"):
        objs = rendered[name]
        secret = _one(objs, "Secret")
        ann = secret["metadata"]["annotations"]
        assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps",
                "serving.kserve.io/s3-region"} <= set(ann)
        assert "data" not in secret, "real (base64) values do not belong in the repository"
        data = secret["stringData"]
        assert data["AWS_ACCESS_KEY_ID"] == "REPLACE_ME" and data["AWS_SECRET_ACCESS_KEY"] == "REPLACE_ME"
        assert data["EMOFLOW_S3_ENDPOINT"] == ann["serving.kserve.io/s3-endpoint"]
        assert data["S3_USE_HTTPS"] == ann["serving.kserve.io/s3-usehttps"]
        assert "://" not in ann["serving.kserve.io/s3-endpoint"]
        sas = {sa["metadata"]["name"]: sa for sa in _by_kind(objs, "ServiceAccount")}
        assert set(sas) == {"emoflow-s3", "emoflow-pipeline"}
        assert {"name": secret["metadata"]["name"]} in sas["emoflow-s3"]["secrets"]
        isvc = _one(objs, "InferenceService")
        assert isvc["spec"]["predictor"]["serviceAccountName"] == "emoflow-s3"


def test_deploy_rbac_is_namespaced_and_minimal(rendered):
    objs = rendered["gpu"]
    role = _one(objs, "Role")
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "verbs": ["create", "get", "list", "watch", "patch"]}]
    binding = _one(objs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "emoflow-pipeline", "namespace": "emoflow"}]


def test_dev_minio_serves_the_endpoint_the_secret_names(rendered):
    objs = rendered["dev-minio"]
    endpoint = _one(objs, "Secret")["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
    host, port = endpoint.rsplit(":", 1)
    svc = _one(objs, "Service")
    assert host in {svc["metadata"]["name"] + ".emoflow.svc.cluster.local", svc["metadata"]["name"] + ".emoflow"}
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    dep = _one(objs, "Deployment")
    pod = dep["spec"]["template"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    container = pod["spec"]["containers"][0]
    tag = container["image"].rsplit(":", 1)[-1]
    assert ":" in container["image"] and tag != "latest"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["MINIO_ROOT_USER"] == {"name": "emoflow-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert refs["MINIO_ROOT_PASSWORD"] == {"name": "emoflow-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    claim = _one(objs, "PersistentVolumeClaim")["metadata"]["name"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in pod["spec"]["volumes"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# --------------------------------------------------------------------------- monitoring


def _check_fields(obj, allowed: set[str], where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected an object, got {type(obj).__name__}"]
    return [f"{where}.{k}: not a Prometheus Operator field" for k in obj if k not in allowed]


def _check_selector(sel: dict, where: str) -> list[str]:
    problems = _check_fields(sel, LABEL_SELECTOR_FIELDS, where)
    for i, expr in enumerate(sel.get("matchExpressions") or []):
        problems += _check_fields(expr, MATCH_EXPRESSION_FIELDS, f"{where}.matchExpressions[{i}]")
        if expr.get("operator") not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            problems.append(f"{where}.matchExpressions[{i}].operator {expr.get('operator')!r}")
    return problems


def _selects(sel: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _check_relabelings(items, where: str) -> list[str]:
    problems = []
    for i, r in enumerate(items or []):
        problems += _check_fields(r, RELABEL_FIELDS, f"{where}[{i}]")
        if "action" in r and str(r["action"]).lower() not in RELABEL_ACTIONS:
            problems.append(f"{where}[{i}].action {r['action']!r}")
    return problems


def _check_endpoint(ep: dict, allowed: set[str], where: str) -> list[str]:
    problems = _check_fields(ep, allowed, where)
    for key in ("interval", "scrapeTimeout"):
        if key in ep and not DURATION.match(str(ep[key])):
            problems.append(f"{where}.{key} {ep[key]!r} is not a Prometheus duration")
    if ep.get("scheme", "http") not in {"http", "https", "HTTP", "HTTPS"}:
        problems.append(f"{where}.scheme {ep['scheme']!r}")
    problems += _check_relabelings(ep.get("relabelings"), f"{where}.relabelings")
    problems += _check_relabelings(ep.get("metricRelabelings"), f"{where}.metricRelabelings")
    return problems


def test_prometheus_rule_uses_operator_fields(rendered):
    rules = _by_kind(rendered["monitoring"], "PrometheusRule")
    assert rules
    for pr in rules:
        assert pr["apiVersion"] == "monitoring.coreos.com/v1"
        problems = _check_fields(pr, {"apiVersion", "kind", "metadata", "spec"}, "PrometheusRule")
        problems += _check_fields(pr["metadata"], METADATA_FIELDS, "metadata")
        problems += _check_fields(pr["spec"], {"groups"}, "spec")
        names = [g.get("name") for g in pr["spec"]["groups"]]
        assert len(names) == len(set(names)), f"duplicate group names {names}"
        for gi, group in enumerate(pr["spec"]["groups"]):
            where = f"spec.groups[{gi}]"
            problems += _check_fields(group, RULE_GROUP_FIELDS, where)
            if "interval" in group and not DURATION.match(str(group["interval"])):
                problems.append(f"{where}.interval {group['interval']!r}")
            assert group.get("rules"), f"{where} has no rules"
            for ri, rule in enumerate(group["rules"]):
                rw = f"{where}.rules[{ri}]"
                problems += _check_fields(rule, RULE_FIELDS, rw)
                if ("record" in rule) == ("alert" in rule):
                    problems.append(f"{rw}: exactly one of record/alert")
                if not str(rule.get("expr", "")).strip():
                    problems.append(f"{rw}: empty expr")
                if "record" in rule and ({"for", "annotations", "keep_firing_for"} & set(rule)):
                    problems.append(f"{rw}: for/annotations only on alerts")
                for key in ("for", "keep_firing_for"):
                    if key in rule and not DURATION.match(str(rule[key])):
                        problems.append(f"{rw}.{key} {rule[key]!r} is not a Prometheus duration")
        assert problems == []


def test_pod_or_service_monitor_uses_operator_fields_and_selects_the_predictor(rendered):
    objs = rendered["monitoring"]
    monitors = _by_kind(objs, "PodMonitor") + _by_kind(objs, "ServiceMonitor")
    assert monitors
    isvc_container = _one(rendered["gpu"], "InferenceService")["spec"]["predictor"]["containers"][0]
    port_names = {p["name"] for p in isvc_container["ports"]}
    port_numbers = {p["containerPort"] for p in isvc_container["ports"]}
    for mon in monitors:
        kind = mon["kind"]
        assert mon["apiVersion"] == "monitoring.coreos.com/v1"
        problems = _check_fields(mon, {"apiVersion", "kind", "metadata", "spec"}, kind)
        problems += _check_fields(mon["metadata"], METADATA_FIELDS, "metadata")
        spec = mon["spec"]
        if kind == "PodMonitor":
            problems += _check_fields(spec, PODMONITOR_SPEC_FIELDS, "spec")
            endpoints, allowed, ep_key = spec.get("podMetricsEndpoints") or [], POD_METRICS_ENDPOINT_FIELDS, "podMetricsEndpoints"
        else:
            problems += _check_fields(spec, SERVICEMONITOR_SPEC_FIELDS, "spec")
            endpoints, allowed, ep_key = spec.get("endpoints") or [], SERVICE_ENDPOINT_FIELDS, "endpoints"
        problems += _check_selector(spec.get("selector") or {}, "spec.selector")
        if "namespaceSelector" in spec:
            problems += _check_fields(spec["namespaceSelector"], NAMESPACE_SELECTOR_FIELDS, "spec.namespaceSelector")
        assert endpoints, f"{kind} has no {ep_key}"
        for i, ep in enumerate(endpoints):
            problems += _check_endpoint(ep, allowed, f"spec.{ep_key}[{i}]")
        assert problems == []
        if kind == "PodMonitor":
            # it must scrape the predictor pods of the InferenceService on the container's port
            assert _selects(spec["selector"], PREDICTOR_POD_LABELS), spec["selector"]
            for ep in endpoints:
                assert ep.get("port") in port_names or ep.get("portNumber") in port_numbers, ep
                assert ep.get("path", "/metrics") == "/metrics"
            ns = spec.get("namespaceSelector") or {}
            assert mon["metadata"]["namespace"] == "emoflow" or ns.get("any") or "emoflow" in ns.get("matchNames", [])


def test_operator_field_check_catches_mistakes():
    bad = {"selector": {"matchLabel": {"a": "b"}}, "podMetricEndpoints": []}
    assert _check_fields(bad, PODMONITOR_SPEC_FIELDS, "spec") == [
        "spec.podMetricEndpoints: not a Prometheus Operator field"]
    assert _check_selector(bad["selector"], "spec.selector") == [
        "spec.selector.matchLabel: not a Prometheus Operator field"]
    assert _check_endpoint({"port": "http1", "intervall": "15s", "scrapeTimeout": "10 s"},
                           POD_METRICS_ENDPOINT_FIELDS, "ep") == [
        "ep.intervall: not a Prometheus Operator field", "ep.scrapeTimeout '10 s' is not a Prometheus duration"]
    assert not _selects({"matchLabels": {"serving.kserve.io/inferenceservice": "other"}}, PREDICTOR_POD_LABELS)


def test_grafana_dashboard_configmap(rendered):
    cms = [c for c in _by_kind(rendered["monitoring"], "ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    assert len(cms) == 1
    cm = cms[0]
    assert cm["metadata"]["name"] == "emoflow-grafana-dashboard"  # no hash suffix: a stable name
    assert list(cm["data"]) == ["emoflow-dashboard.json"]
    body = cm["data"]["emoflow-dashboard.json"]
    dashboard = json.loads(body)
    assert dashboard.get("panels") or dashboard.get("rows")
    source = rendered["_root"] / "grafana" / "emoflow-dashboard.json"
    assert json.loads(source.read_text()) == dashboard
    # kubectl client-side apply keeps a copy in an annotation limited to 256 KiB
    assert len(body.encode()) < 256 * 1024

