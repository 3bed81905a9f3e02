"""KServe deployment: apply an InferenceService to the cluster, wait for Ready, move canary traffic.

The object itself (its fields, defaults and checks) is built by :mod:`emoflow.serving.isvc`; its
public names are importable from here too.

    isvc = build_inference_service("emoflow", "team-a", "s3://emoflow/registry/emoflow/v3/",
                                   image=serving_image, canary_traffic_percent=10)
    deploy_to_cluster(isvc)            # create, or replace the live spec, then wait for Ready
    promote_canary("emoflow", "team-a")   # or rollback_canary(...)

An update replaces the whole object (HTTP PUT with the live ``resourceVersion``, retried on a
409 conflict), so the live spec ends up exactly the one built here: a redeploy with ``gpu=0``
leaves no GPU limit, node selector or toleration behind.

``python -m emoflow.serving.deploy`` prints the default InferenceService as YAML (the one in
``manifests/base/inferenceservice.yaml``, without a namespace); options change the name, URI,
GPU count and image. Canary rollouts need KServe's Serverless (Knative) deployment mode.
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kserve import KServeClient, V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
from kubernetes import client as k8s

from emoflow import images
from emoflow.serving.isvc import (
    API_VERSION,
    CONTAINER_NAME,
    DEFAULT_GPU_NODE_SELECTOR,
    DEFAULT_GPU_TOLERATIONS,
    DEFAULT_NAME,
    DEFAULT_RESOURCES,
    DEFAULT_S3_SECRET,
    DEFAULT_SERVICE_ACCOUNT,
    DEFAULT_STORAGE_URI,
    DNS_LABEL,
    GPU_RESOURCE,
    HTTP_PORT,
    HTTP_PORT_NAME,
    KIND,
    LABELS,
    METRICS_ANNOTATIONS,
    METRICS_PATH,
    MODEL_DIR,
    NAMESPACE_NAME,
    READY_PATH,
    build_inference_service,
    check_name,
    default_inference_service,
    normalize_storage_uri,
    render_yaml,
    to_manifest,
    unknown_fields,
)

# The names of emoflow.serving.isvc that callers import from here (one definition, two addresses).
__all__ = [
    "API_VERSION", "CONTAINER_NAME", "DEFAULT_GPU_NODE_SELECTOR", "DEFAULT_GPU_TOLERATIONS", "DEFAULT_NAME",
    "DEFAULT_RESOURCES", "DEFAULT_S3_SECRET", "DEFAULT_SERVICE_ACCOUNT", "DEFAULT_STORAGE_URI", "GPU_RESOURCE",
    "HTTP_PORT", "HTTP_PORT_NAME", "KIND", "LABELS", "METRICS_ANNOTATIONS", "METRICS_PATH", "MODEL_DIR",
    "READY_PATH", "build_inference_service", "default_inference_service", "normalize_storage_uri",
    "render_yaml", "to_manifest", "unknown_fields",
    # defined here
    "POD_NAMESPACE_FILE", "REPLACE_ATTEMPTS", "DeployError", "current_namespace", "deploy_to_cluster",
    "main", "promote_canary", "rollback_canary", "wait_ready",
]

# Where a pod finds its own namespace (the service account token volume every pod mounts).
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Annotations the KServe webhook writes on the InferenceService (inference_service_defaults.go sets
# the deployment mode; the validator refuses a change of mode): a replace keeps their live values.
_SYSTEM_ANNOTATIONS = ("serving.kserve.io/deploymentMode",)
REPLACE_ATTEMPTS = 5
# Model transition states after which waiting longer will not help (KServe modelStatus).
_TERMINAL_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}


class DeployError(RuntimeError):
    """A deployment that could not be applied or never became ready."""


def current_namespace(path: str | Path | None = None) -> str:
    """The namespace of the pod this runs in (from its service account volume, :data:`POD_NAMESPACE_FILE`).

    Raises :class:`DeployError` when the file is absent (not in a pod: pass a namespace).
    """
    path = path or POD_NAMESPACE_FILE
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise DeployError(f"namespace is empty and {path} cannot be read ({exc.strerror}): not running "
                          "in a Kubernetes pod, so pass the namespace to deploy into") from None
    check_name(f"namespace in {path}", value, NAMESPACE_NAME)
    return value


# --------------------------------------------------------------------------- cluster


def deploy_to_cluster(
    isvc: V1beta1InferenceService,
    *,
    client: Any = None,
    timeout_s: float = 600,
    poll_s: float = 5.0,
) -> dict:
    """Create the InferenceService, or replace the live one, then wait until it is Ready.

    An existing service is replaced (PUT with its ``resourceVersion``; on a 409 conflict the live
    object is read again and the replace retried, :data:`REPLACE_ATTEMPTS` times in all), so its
    spec, labels and annotations become exactly ``isvc``'s: fields of an earlier deploy (a GPU node
    selector, tolerations, a canary percentage, an edited container list) do not survive. Only
    what the cluster owns is carried over: finalizers, owner references and the deployment-mode
    annotation KServe's webhook records. Returns the ready object (a dict; its ``status.url`` is
    the endpoint). Raises :class:`DeployError` when the image uses the placeholder registry, the API
    refuses the object, or it is not Ready within ``timeout_s`` seconds or the model failed to load.
    ``client`` is a ``kserve.KServeClient`` (default: one from the kubeconfig or in-cluster config).
    """
    if not isinstance(isvc, V1beta1InferenceService):
        raise TypeError(f"isvc must be a V1beta1InferenceService, got {type(isvc).__name__}")
    name, namespace = isvc.metadata.name, isvc.metadata.namespace
    if not name or not namespace:
        raise ValueError("isvc.metadata must have a name and a namespace")
    for container in isvc.spec.predictor.containers or []:
        _check_deployable_image(container.image)
    client = client or KServeClient()
    existing = _get_or_none(client, name, namespace)
    created = existing is None
    try:
        applied = client.create(isvc, namespace=namespace) if created else None
    except RuntimeError as exc:
        if _status_of(exc) != 409:
            raise DeployError(f"could not create InferenceService {namespace}/{name}: {exc}") from exc
        created, existing = False, _get_or_none(client, name, namespace)  # created meanwhile
    attempt = 0
    while not created:
        attempt += 1
        if existing is None:
            raise DeployError(f"InferenceService {namespace}/{name} disappeared while it was being replaced")
        try:
            applied = client.replace(name, _replacement(isvc, existing), namespace=namespace)
            break
        except RuntimeError as exc:
            if _status_of(exc) != 409 or attempt >= REPLACE_ATTEMPTS:
                raise DeployError(f"could not replace InferenceService {namespace}/{name} "
                                  f"(attempt {attempt}): {exc}") from exc
            existing = _get_or_none(client, name, namespace)  # changed under us: read it again
    generation = ((applied or {}).get("metadata") or {}).get("generation")
    return wait_ready(client, name, namespace, timeout_s=timeout_s, poll_s=poll_s,
                      generation=generation, created=created)


def _replacement(isvc: V1beta1InferenceService, live: Mapping) -> V1beta1InferenceService:
    """``isvc`` with the live object's ``resourceVersion`` and the metadata the cluster owns."""
    body = copy.deepcopy(isvc)
    meta, live_meta = body.metadata, live.get("metadata") or {}
    meta.resource_version = live_meta.get("resourceVersion")
    meta.finalizers = live_meta.get("finalizers") or None
    meta.owner_references = live_meta.get("ownerReferences") or None
    kept = {k: v for k, v in (live_meta.get("annotations") or {}).items()
            if k in _SYSTEM_ANNOTATIONS and k not in (meta.annotations or {})}
    if kept:
        meta.annotations = {**(meta.annotations or {}), **kept}
    return body


def _check_deployable_image(image: str | None) -> None:
    if image and image.startswith(images.DEFAULT_REGISTRY + "/"):
        raise DeployError(
            f"image {image!r} is in the placeholder registry {images.DEFAULT_REGISTRY}: the cluster cannot "
            f"pull it. Compile the pipeline with {images.REGISTRY_ENV} set to your registry (its serving_image "
            f"parameter), pass serving_image / --image, or set {images.REGISTRY_ENV} for a local deploy")


def _status_of(exc: BaseException) -> int | None:
    """HTTP status of an API error that KServeClient wrapped in a RuntimeError."""
    cause = exc.__cause__ or exc.__context__
    status = getattr(cause, "status", None)
    if isinstance(status, int):
        return status
    found = re.search(r"\((\d{3})\)", str(exc))
    return int(found.group(1)) if found else None


def wait_ready(
    client: Any,
    name: str,
    namespace: str,
    *,
    timeout_s: float = 600,
    poll_s: float = 5.0,
    generation: int | None = None,
    created: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Poll until the InferenceService is Ready for ``generation`` (when given); return it.

    Raises :class:`DeployError` naming the last conditions on timeout, or at once when KServe
    reports the model as failed to load / invalid.
    """
    deadline = clock() + timeout_s
    obj: dict = {}
    while True:
        obj = _get_or_none(client, name, namespace) or {}
        if not obj:
            raise DeployError(f"InferenceService {namespace}/{name} disappeared while waiting for Ready")
        status = obj.get("status") or {}
        ready = _condition(status, "Ready")
        observed = status.get("observedGeneration")
        if generation is None or observed is None:
            current = generation is None or created
        else:
            current = observed >= generation
        if current and ready is not None and str(ready.get("status", "")).lower() == "true":
            return obj
        transition = (status.get("modelStatus") or {}).get("transitionStatus")
        if current and transition in _TERMINAL_TRANSITIONS:
            raise DeployError(f"InferenceService {namespace}/{name} failed: model {transition}; "
                              f"{_describe(status)}")
        if clock() >= deadline:
            raise DeployError(f"InferenceService {namespace}/{name} not Ready after {timeout_s:g} s; "
                              f"{_describe(status)}")
        sleep(max(0.0, min(poll_s, deadline - clock())))


def promote_canary(name: str, namespace: str, *, client: Any = None, wait: bool = True,
                   timeout_s: float = 600, poll_s: float = 5.0) -> dict:
    """Send all traffic to the latest revision (``canaryTrafficPercent: 100``)."""
    return _set_canary(name, namespace, 100, client=client, wait=wait, timeout_s=timeout_s, poll_s=poll_s)


def rollback_canary(name: str, namespace: str, *, client: Any = None, wait: bool = True,
                    timeout_s: float = 600, poll_s: float = 5.0) -> dict:
    """Send all traffic back to the previous rolled-out revision (``canaryTrafficPercent: 0``).

    Raises :class:`DeployError` when the service has no previous revision to go back to.
    """
    return _set_canary(name, namespace, 0, client=client, wait=wait, timeout_s=timeout_s, poll_s=poll_s)


def _set_canary(name, namespace, percent, *, client, wait, timeout_s, poll_s) -> dict:
    check_name("name", name, DNS_LABEL)
    check_name("namespace", namespace, NAMESPACE_NAME)
    client = client or KServeClient()
    existing = _get_or_none(client, name, namespace)
    if existing is None:
        raise DeployError(f"InferenceService {namespace}/{name} does not exist")
    predictor_status = ((existing.get("status") or {}).get("components") or {}).get("predictor") or {}
    if percent == 0 and not predictor_status.get("previousRolledoutRevision"):
        raise DeployError(f"InferenceService {namespace}/{name} has no previous rolled-out revision "
                          "to roll back to")
    patch = V1beta1InferenceService(
        api_version=API_VERSION, kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
        spec=V1beta1InferenceServiceSpec(predictor=V1beta1PredictorSpec(canary_traffic_percent=percent)),
    )
    try:
        applied = client.patch(name, patch, namespace=namespace)
    except RuntimeError as exc:
        raise DeployError(f"could not set canaryTrafficPercent={percent} on {namespace}/{name}: {exc}") from exc
    if not wait:
        return applied
    generation = ((applied or {}).get("metadata") or {}).get("generation")
    return wait_ready(client, name, namespace, timeout_s=timeout_s, poll_s=poll_s, generation=generation)


def _get_or_none(client: Any, name: str, namespace: str) -> dict | None:
    try:
        return client.get(name, namespace=namespace)
    except RuntimeError as exc:  # KServeClient wraps the ApiException in a RuntimeError
        if _status_of(exc) == 404:
            return None
        raise DeployError(f"could not read InferenceService {namespace}/{name}: {exc}") from exc


def _condition(status: Mapping, kind: str) -> Mapping | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def _describe(status: Mapping) -> str:
    conds = status.get("conditions") or []
    parts = [
        f"{c.get('type')}={c.get('status')}"
        + (f" ({c.get('reason')}: {c.get('message')})" if c.get("reason") or c.get("message") else "")
        for c in conds
    ]
    text = "last conditions: " + ("; ".join(parts) if parts else "none reported")
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo")
    if failure:
        text += f"; last model failure: {failure.get('reason')}: {failure.get('message')}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emoflow.serving.deploy",
                                     description="Print an emoflow InferenceService as YAML.")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--namespace", default=None, help="default: none (set by the kustomize overlay)")
    parser.add_argument("--storage-uri", default=DEFAULT_STORAGE_URI)
    parser.add_argument("--gpu", type=int, default=1)
    parser.add_argument("--image", default=None)
    parser.add_argument("--canary-traffic-percent", type=int, default=None)
    args = parser.parse_args(argv)
    isvc = build_inference_service(args.name, args.namespace, args.storage_uri, gpu=args.gpu,
                                   image=args.image, canary_traffic_percent=args.canary_traffic_percent)
    print(render_yaml(isvc), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
