"""The predictor pod KServe and Knative make from an InferenceService, in each deployment mode, and
how a Prometheus Operator PodMonitor endpoint picks its targets: facts we rely on, pinned as our
own test data (nothing here is copied from those projects; each fact names where it was read).

Versions read: kserve v0.20.0 (the newest release tag of kserve/kserve; the kserve 0.21.0 SDK in
.venv talks to the same v1beta1 API), whose go.mod pins knative.dev/serving v0.48.1 (Knative
1.21); prometheus-operator v0.93.0 (the `port` rule is the same back to v0.50.0).

KServe (pkg/controller/v1beta1/inferenceservice/components/predictor.go, ``buildObjectMeta``): the
predictor pods carry the InferenceService's labels, the predictor component's labels and
``serving.kserve.io/inferenceservice=<name>``, ``component=predictor``.

RawDeployment ("Standard") mode (reconcilers/deployment/deployment_reconciler.go,
``createRawDefaultDeployment``): a Deployment whose pod template is the predictor's pod spec as
given (containers and their ports unchanged) plus the label ``app=isvc.<name>-predictor``.

Serverless (Knative) mode (knative.dev/serving v0.48.1, pkg/reconciler/revision/resources):
- deploy.go ``makeServingContainer``: the serving container's ports are *replaced* by one port,
  ``buildContainerPorts`` → name ``user-port`` (pkg/apis/serving/v1/revision_helpers.go
  ``UserPortName``), number = the first declared port (default 8080); HTTP readiness probes are
  removed from the user container (queue-proxy probes it instead).
- queue.go ``makeQueueContainer``: a ``queue-proxy`` container with ports ``http-autometric`` 9090,
  ``http-usermetric`` 9091 (``queueNonServingPorts``), ``queue-port`` 8012 (8013 for h2c) and
  ``https-port`` 8112 (pkg/networking/constants.go).
- pkg/apis/serving/k8s_validation.go ``validateContainerPorts``: the user port's name must be empty,
  ``http1`` or ``h2c``; deploy.go: "only up to a single port is allowed on the Revision".
KServe's metric aggregation (pkg/webhook/admission/pod/metrics_aggregate_injector.go): with the pod
annotation ``serving.kserve.io/enable-metric-aggregation: "true"`` the queue-proxy container also gets
port ``aggr-metric`` 9088 (constants.go ``AggregateMetricsPortName``,
``QueueProxyAggregatePrometheusMetricsPort``) - only where the cluster runs KServe's queue-proxy
extension image.

Prometheus Operator (pkg/prometheus/promcfg.go, pod monitor config): an endpoint with ``port`` keeps
the targets whose ``__meta_kubernetes_pod_container_port_name`` fully matches it; Prometheus' pod
discovery makes one target per declared container port.
"""

from __future__ import annotations

import copy

ISVC_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"
KNATIVE_USER_PORT = "user-port"
KNATIVE_DEFAULT_USER_PORT = 8080
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
QUEUE_PROXY = "queue-proxy"
QUEUE_PROXY_PORTS = [("http-autometric", 9090), ("http-usermetric", 9091), ("queue-port", 8012),
                     ("https-port", 8112)]
AGGREGATE_PORT = ("aggr-metric", 9088)
METRIC_AGGREGATION = "serving.kserve.io/enable-metric-aggregation"


def _pod_labels(isvc: dict) -> dict[str, str]:
    pred = isvc["spec"]["predictor"]
    return {**(isvc["metadata"].get("labels") or {}), **(pred.get("labels") or {}),
            ISVC_LABEL: isvc["metadata"]["name"], COMPONENT_LABEL: "predictor"}


def _annotations(isvc: dict) -> dict[str, str]:
    return {**(isvc["metadata"].get("annotations") or {}), **(isvc["spec"]["predictor"].get("annotations") or {})}


def raw_deployment_pod(isvc: dict) -> dict:
    """The predictor pod of an InferenceService in RawDeployment (Standard) mode."""
    pred = isvc["spec"]["predictor"]
    labels = {**_pod_labels(isvc), "app": f"isvc.{isvc['metadata']['name']}-predictor"}
    return {"metadata": {"labels": labels, "annotations": _annotations(isvc)},
            "spec": {"containers": copy.deepcopy(pred["containers"])}}


def serverless_pod(isvc: dict) -> dict:
    """The predictor pod of an InferenceService in Serverless (Knative) mode."""
    pred = isvc["spec"]["predictor"]
    name = isvc["metadata"]["name"]
    user = copy.deepcopy(pred["containers"][0])
    declared = user.get("ports") or []
    if len(declared) > 1:
        raise ValueError("Knative allows one container port on a Revision")
    if declared and declared[0].get("name", "") not in KNATIVE_PORT_NAMES:
        raise ValueError(f"Knative refuses the port name {declared[0]['name']!r} (empty, http1 or h2c)")
    number = declared[0]["containerPort"] if declared else KNATIVE_DEFAULT_USER_PORT
    user["ports"] = [{"name": KNATIVE_USER_PORT, "containerPort": number}]
    user.pop("readinessProbe", None)
    annotations = _annotations(isvc)
    queue_ports = [{"name": n, "containerPort": p} for n, p in QUEUE_PROXY_PORTS]
    if annotations.get(METRIC_AGGREGATION) == "true":
        queue_ports.append({"name": AGGREGATE_PORT[0], "containerPort": AGGREGATE_PORT[1], "protocol": "TCP"})
    revision = f"{name}-predictor-00001"
    labels = {**_pod_labels(isvc), "serving.knative.dev/revision": revision,
              "serving.knative.dev/configuration": f"{name}-predictor",
              "serving.knative.dev/service": f"{name}-predictor"}
    return {"metadata": {"labels": labels, "annotations": annotations},
            "spec": {"containers": [user, {"name": QUEUE_PROXY, "ports": queue_ports}]}}


MODES = {"RawDeployment": raw_deployment_pod, "Serverless": serverless_pod}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
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


def scrape_targets(pod_monitor: dict, pod: dict) -> list[tuple[int, str, dict]]:
    """(endpoint index, container name, container port) of every target the PodMonitor makes of
    ``pod``: one per endpoint and declared container port whose name the endpoint's ``port`` is."""
    spec = pod_monitor["spec"]
    if not selects(spec.get("selector") or {}, pod["metadata"]["labels"]):
        return []
    targets = []
    for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                by_name = ep.get("port") and port.get("name") == ep["port"]
                by_number = ep.get("portNumber") and port.get("containerPort") == ep["portNumber"]
                if by_name or by_number:
                    targets.append((i, container["name"], port))
    return targets
