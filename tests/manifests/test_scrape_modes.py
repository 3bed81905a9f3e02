"""The PodMonitor finds the predictor in both KServe deployment modes.

The pod each mode makes of the InferenceService the deploy step builds is rendered from the facts
pinned in ``kserve_pod_shapes`` (KServe v0.20.0, Knative serving v0.48.1, Prometheus Operator's
port rule); the PodMonitor of manifests/prometheus/podmonitor.yaml must give exactly one target per
predictor pod, on the predictor container's own port (not queue-proxy's), whatever the
InferenceService is called and whether it serves on a GPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from emoflow.serving import deploy as d
from manifests import kserve_pod_shapes as shapes


MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
URI = "s3://emoflow/registry/emoflow-a1/v3/"
IMAGE = "registry.example.org/ml/emoflow-serve-gpu:1.2.3"


def _pod_monitor() -> dict:
    return yaml.safe_load((MANIFESTS / "prometheus" / "podmonitor.yaml").read_text())


def _isvc(name: str = "emoflow", **kwargs) -> dict:
    return d.to_manifest(d.build_inference_service(name, "team-a", URI, image=IMAGE, **kwargs))


ISVCS = {
    "gpu": _isvc(),
    "cpu": _isvc(gpu=0),
    "other-name": _isvc("emotions-prod", assets="s3://emoflow/assets", image_pull_secrets=["regcred"]),
    "canary": _isvc(canary_traffic_percent=10),
}


@pytest.mark.parametrize("mode", sorted(shapes.MODES))
@pytest.mark.parametrize("which", sorted(ISVCS))
def test_one_target_per_predictor_pod_on_the_predictor_port(mode, which):
    pm = _pod_monitor()
    pod = shapes.MODES[mode](ISVCS[which])
    targets = shapes.scrape_targets(pm, pod)
    assert [(container, port["containerPort"]) for _, container, port in targets] == \
        [(d.CONTAINER_NAME, d.HTTP_PORT)], (mode, which, targets)
    endpoint = pm["spec"]["podMetricsEndpoints"][targets[0][0]]
    assert endpoint.get("path", "/metrics") == d.METRICS_PATH
    # the isvc label for dashboards comes from the pod label KServe sets in both modes
    relabel = endpoint["relabelings"][0]
    assert relabel == {"sourceLabels": ["__meta_kubernetes_pod_label_serving_kserve_io_inferenceservice"],
                       "targetLabel": "isvc"}
    assert pod["metadata"]["labels"][shapes.ISVC_LABEL] == ISVCS[which]["metadata"]["name"]


def test_serverless_with_kserve_metric_aggregation_still_scrapes_once():
    isvc = copy.deepcopy(ISVCS["gpu"])
    isvc["metadata"]["annotations"] = {shapes.METRIC_AGGREGATION: "true"}
    pod = shapes.serverless_pod(isvc)
    assert shapes.AGGREGATE_PORT[0] in {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    targets = shapes.scrape_targets(_pod_monitor(), pod)
    assert [(c, p["containerPort"]) for _, c, p in targets] == [(d.CONTAINER_NAME, d.HTTP_PORT)]


def test_the_predictor_port_is_one_knative_accepts():
    """Knative takes one port named http1/h2c (or unnamed); KServe's Serverless mode rejects others."""
    for isvc in ISVCS.values():
        (port,) = isvc["spec"]["predictor"]["containers"][0]["ports"]
        assert port["name"] in shapes.KNATIVE_PORT_NAMES and port["containerPort"] == d.HTTP_PORT
    bad = copy.deepcopy(ISVCS["gpu"])
    bad["spec"]["predictor"]["containers"][0]["ports"].append({"name": "metrics", "containerPort": 9090})
    with pytest.raises(ValueError, match="one container port"):
        shapes.serverless_pod(bad)


def test_other_pods_are_not_scraped():
    pm = _pod_monitor()
    webhook = {"metadata": {"labels": {"app.kubernetes.io/name": "emoflow",
                                       "app.kubernetes.io/component": "retrain-webhook"}},
               "spec": {"containers": [{"name": "webhook", "ports": [{"name": "http1", "containerPort": 9095}]}]}}
    other_isvc = shapes.raw_deployment_pod(ISVCS["gpu"])
    other_isvc["metadata"]["labels"]["app.kubernetes.io/name"] = "someone-else"
    assert shapes.scrape_targets(pm, webhook) == [] and shapes.scrape_targets(pm, other_isvc) == []


def test_a_port_named_http1_only_finds_nothing_in_serverless_mode():
    """The PodMonitor as it was (one endpoint, port http1): no target in KServe's default mode."""
    pm = _pod_monitor()
    pm["spec"]["podMetricsEndpoints"] = [ep for ep in pm["spec"]["podMetricsEndpoints"] if ep["port"] == "http1"]
    assert shapes.scrape_targets(pm, shapes.serverless_pod(ISVCS["gpu"])) == []
    assert len(shapes.scrape_targets(pm, shapes.raw_deployment_pod(ISVCS["gpu"]))) == 1
