"""The KServe InferenceService emoflow deploys: built from a registered model version, checked.

The InferenceService (``serving.kserve.io/v1beta1``) runs the emoflow predictor image as a custom
container named ``kserve-container``. KServe's storage initializer downloads the registered
version from ``STORAGE_URI`` (an ``s3://`` prefix ending in ``/``, with credentials from the service
account's Secret) to ``/mnt/models``; the predictor loads it from there and reports ready on
``/v2/health/ready`` (port 8080) once loaded.

    isvc = build_inference_service("emoflow", "team-a", "s3://emoflow/registry/emoflow/v3/",
                                   image=serving_image, canary_traffic_percent=10)
    print(render_yaml(isvc))

Every argument is checked here, before anything reaches a cluster; :func:`unknown_fields` checks a
hand-edited manifest against the kserve / kubernetes SDK models. Applying the object to a cluster
(create or replace, wait for Ready, canary promote/rollback) is :mod:`emoflow.serving.deploy`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
from kserve.constants import constants as kserve_constants
from kubernetes import client as k8s

from emoflow import images
from emoflow.assets import MIRROR_ENV

API_VERSION = f"{kserve_constants.KSERVE_GROUP}/{kserve_constants.KSERVE_V1BETA1_VERSION}"
KIND = kserve_constants.KSERVE_KIND_INFERENCESERVICE

DEFAULT_NAME = "emoflow"
# Placeholder for the manifests: a registry version prefix in the cluster's object store.
DEFAULT_STORAGE_URI = "s3://emoflow/registry/emoflow/v1/"
DEFAULT_SERVICE_ACCOUNT = "emoflow-s3"
# The Secret with the S3 credentials (manifests/base/s3-secret.yaml); the predictor reads it as
# environment variables when it fetches offline assets from an s3:// mirror.
DEFAULT_S3_SECRET = "emoflow-s3"
CONTAINER_NAME = "kserve-container"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
HTTP_PORT = 8080
# The predictor container's port name. KServe's RawDeployment mode keeps it on the pod; in Serverless
# (Knative) mode Knative renames the user container's port to "user-port" (knative.dev/serving
# pkg/reconciler/revision/resources/deploy.go buildContainerPorts). The PodMonitor selects both.
HTTP_PORT_NAME = "http1"
METRICS_PATH = "/metrics"
# KServe's annotations naming the model server's metrics port/path (pkg/constants/constants.go
# KserveContainerPrometheusPortKey / KServeContainerPrometheusPathKey): used by KServe's
# queue-proxy metric aggregation when a cluster enables it.
METRICS_ANNOTATIONS = {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": METRICS_PATH}
# KServe's storage initializer lists every object under the STORAGE_URI prefix (python/storage
# kserve_storage/kserve_storage.py Storage._download_s3: bucket.objects.filter(Prefix=...), kserve
# v0.20.0; GCS lists by prefix the same way): ".../v1" also matches ".../v10/...", so object-store
# URIs are given a trailing "/".
_PREFIX_LISTED = ("s3://", "gs://")
READY_PATH = "/v2/health/ready"
GPU_RESOURCE = "nvidia.com/gpu"
# Label set by NVIDIA GPU feature discovery / the GPU operator on GPU nodes, and the usual taint.
DEFAULT_GPU_NODE_SELECTOR: dict[str, str] = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS: list[dict[str, str]] = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "4Gi"},
    "limits": {"cpu": "4", "memory": "8Gi"},
}
LABELS = {"app.kubernetes.io/name": "emoflow", "app.kubernetes.io/component": "predictor"}

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_URI = re.compile(r"^(s3|gs|pvc|https?|hdfs|webhdfs|hf|oci)://[^/\s]+(/\S*)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_TOLERATION_KEYS = {"key": "key", "operator": "operator", "value": "value", "effect": "effect",
                    "tolerationSeconds": "toleration_seconds"}
_TOLERATION_OPERATORS = {"Exists", "Equal"}
_TOLERATION_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}


def build_inference_service(
    name: str,
    namespace: str | None,
    storage_uri: str,
    *,
    image: str | None = None,
    gpu: int = 1,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any] | k8s.V1Toleration] | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    min_replicas: int = 1,
    max_replicas: int = 1,
    canary_traffic_percent: int | None = None,
    resources: Mapping[str, Mapping[str, str]] | None = None,
    env: Mapping[str, str] | Sequence[k8s.V1EnvVar] | None = None,
    image_pull_secrets: Sequence[str] | None = None,
    assets: str = "",
    s3_secret: str = DEFAULT_S3_SECRET,
) -> V1beta1InferenceService:
    """The InferenceService that serves the model version at ``storage_uri``.

    ``namespace`` ``None`` leaves it out (the namespace-neutral manifest of ``manifests/base``).
    An ``s3://`` or ``gs://`` ``storage_uri`` is a version prefix and gets a trailing ``/``.
    ``image`` defaults to ``images.image("serve-gpu")`` when ``gpu > 0`` and ``images.image("serve")``
    otherwise. With ``gpu > 0`` the container gets an ``nvidia.com/gpu`` limit, and
    ``node_selector`` / ``tolerations`` default to :data:`DEFAULT_GPU_NODE_SELECTOR` /
    :data:`DEFAULT_GPU_TOLERATIONS` (pass ``{}`` / ``[]`` for none); with ``gpu == 0`` they
    default to none. ``resources`` (``{"requests": {...}, "limits": {...}}``) replaces
    :data:`DEFAULT_RESOURCES`; the GPU limit always follows ``gpu``. ``canary_traffic_percent``
    (0–100) sends that share of traffic to this new revision, the rest to the previous one.
    ``image_pull_secrets`` names Secrets of the predictor pod. ``assets`` (the offline-asset mirror,
    e.g. ``s3://bucket/assets``) becomes ``$EMOFLOW_ASSETS_URI`` of the predictor, which then also
    gets the S3 credentials of the Secret ``s3_secret`` as environment variables.
    Every bad argument raises ``ValueError`` naming it.
    """
    check_name("name", name, DNS_LABEL)
    if namespace is not None:
        check_name("namespace", namespace, NAMESPACE_NAME)
    check_name("service_account", service_account, NAMESPACE_NAME, allow_dots=True)
    storage_uri = normalize_storage_uri(storage_uri)
    gpu = _check_int("gpu", gpu, 0, 16)
    min_replicas = _check_int("min_replicas", min_replicas, 0, 1000)
    max_replicas = _check_int("max_replicas", max_replicas, 1, 1000)
    if min_replicas > max_replicas:
        raise ValueError(f"min_replicas ({min_replicas}) is greater than max_replicas ({max_replicas})")
    if canary_traffic_percent is not None:
        canary_traffic_percent = _check_int("canary_traffic_percent", canary_traffic_percent, 0, 100)
    if image is None:
        image = images.image("serve-gpu" if gpu > 0 else "serve")
    if not isinstance(image, str) or not image or image.split("/")[-1].count(":") + image.count("@") == 0:
        raise ValueError(f"image {image!r} has no tag or digest; use an explicit version")
    if image.endswith(":latest"):
        raise ValueError(f"image {image!r} uses :latest; use an explicit version")
    pull_secrets = _pull_secrets(image_pull_secrets)
    env = _env_vars(env)
    env_from = None
    if assets:
        if not isinstance(assets, str) or not _URI.match(assets):
            raise ValueError(f"assets {assets!r} is not a mirror URI (e.g. s3://bucket/assets)")
        if any(e.name == MIRROR_ENV for e in env):
            raise ValueError(f"env may not set {MIRROR_ENV}: pass assets instead")
        check_name("s3_secret", s3_secret, NAMESPACE_NAME, allow_dots=True)
        env.append(k8s.V1EnvVar(name=MIRROR_ENV, value=assets))
        env_from = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s3_secret, optional=False))]

    if node_selector is None:
        node_selector = DEFAULT_GPU_NODE_SELECTOR if gpu > 0 else {}
    node_selector = _check_str_map("node_selector", node_selector)
    if tolerations is None:
        tolerations = DEFAULT_GPU_TOLERATIONS if gpu > 0 else []
    tolerations = [_toleration(i, t) for i, t in enumerate(tolerations)]

    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=image,
        args=["--model_name", name, "--storage_uri", MODEL_DIR, "--http_port", str(HTTP_PORT)],
        env=[k8s.V1EnvVar(name="STORAGE_URI", value=storage_uri), *env],
        env_from=env_from,
        ports=[k8s.V1ContainerPort(container_port=HTTP_PORT, name=HTTP_PORT_NAME, protocol="TCP")],
        resources=_resources(resources, gpu),
        readiness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path=READY_PATH, port=HTTP_PORT),
            initial_delay_seconds=5, period_seconds=10, timeout_seconds=5, failure_threshold=3,
        ),
        security_context=k8s.V1SecurityContext(
            run_as_non_root=True, allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    )
    predictor = V1beta1PredictorSpec(
        containers=[container],
        service_account_name=service_account,
        image_pull_secrets=pull_secrets or None,
        node_selector=node_selector or None,
        tolerations=tolerations or None,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        canary_traffic_percent=canary_traffic_percent,
        labels=dict(LABELS),
        annotations=dict(METRICS_ANNOTATIONS),
    )
    return V1beta1InferenceService(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=dict(LABELS)),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def normalize_storage_uri(storage_uri: Any) -> str:
    """``storage_uri`` checked, with the trailing ``/`` an object-store version prefix needs.

    KServe's storage initializer downloads every object whose key starts with the URI's path, so
    ``s3://b/registry/m/v1`` would also fetch ``v10``…``v19`` into ``/mnt/models``.
    """
    if not isinstance(storage_uri, str) or not _URI.match(storage_uri):
        raise ValueError(f"storage_uri {storage_uri!r} is not a model URI KServe can download "
                         "(s3://bucket/prefix/, gs://, pvc://, https://, hf://, oci://)")
    if storage_uri.startswith(_PREFIX_LISTED):
        if len(storage_uri.split("://", 1)[1].strip("/").split("/")) < 2:
            raise ValueError(f"storage_uri {storage_uri!r} names a bucket only; give the registry "
                             "version prefix, e.g. s3://bucket/registry/<model>/<version>/")
        storage_uri = storage_uri.rstrip("/") + "/"
    return storage_uri


def to_manifest(isvc: V1beta1InferenceService) -> dict:
    """The InferenceService as a plain dict (camelCase keys, no ``None`` fields), as kubectl reads it."""
    return k8s.ApiClient().sanitize_for_serialization(isvc)


def render_yaml(isvc: V1beta1InferenceService) -> str:
    """The InferenceService as YAML text."""
    return yaml.safe_dump(to_manifest(isvc), sort_keys=False, default_flow_style=False)


def default_inference_service(gpu: int = 1) -> V1beta1InferenceService:
    """The namespace-neutral InferenceService of ``manifests/base`` (``gpu=1``) or of the ``cpu``
    component (``gpu=0``); an overlay gives it its namespace."""
    return build_inference_service(DEFAULT_NAME, None, DEFAULT_STORAGE_URI, gpu=gpu)


def unknown_fields(manifest: Mapping, type_name: str = "V1beta1InferenceService") -> list[str]:
    """Problems of a manifest dict against the kserve / kubernetes SDK models, field by field.

    Every key must be one the model of its place defines (``attribute_map``); strings, integers
    and booleans must have their declared type. Returns paths like ``spec.predictor.containers[0].imag``
    (empty when the manifest is clean). Use it to check a hand-edited InferenceService YAML.
    """
    return _walk(manifest, type_name, "")


def _model_class(type_name: str):
    import kserve.models as kserve_models

    return getattr(kserve_models, type_name, None) or getattr(k8s, type_name, None)


_PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


def _walk(value: Any, type_name: str, path: str) -> list[str]:
    where = path or "<root>"
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list ({type_name}), got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in _walk(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, Mapping):
            return [f"{where}: expected a mapping ({type_name}), got {type(value).__name__}"]
        inner = type_name[type_name.index(",") + 1:-1].strip()
        return [p for key, item in value.items() for p in _walk(item, inner, f"{path}.{key}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and (type_name == "bool" or not isinstance(value, bool))
        return [] if ok else [f"{where}: expected {type_name}, got {type(value).__name__} {value!r}"]
    cls = _model_class(type_name)
    if cls is None:  # free-form (object, IntOrString, ResourceQuantity, datetime...)
        return []
    if not isinstance(value, Mapping):
        return [f"{where}: expected an object ({type_name}), got {type(value).__name__}"]
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    problems = []
    for key, item in value.items():
        sub = f"{path}.{key}" if path else key
        if key not in by_json:
            problems.append(f"{sub}: unknown field of {type_name}")
        else:
            problems += _walk(item, cls.openapi_types[by_json[key]], sub)
    return problems


def check_name(what: str, value: Any, pattern: re.Pattern, allow_dots: bool = False) -> None:
    ok = isinstance(value, str) and 0 < len(value) <= (253 if allow_dots else 63)
    if ok:
        ok = all(pattern.match(part) for part in value.split(".")) if allow_dots else bool(pattern.match(value))
    if not ok:
        raise ValueError(f"{what} {value!r} is not a valid Kubernetes name "
                         "(lowercase letters, digits and '-', at most 63 characters)")


def _check_int(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_str_map(what: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping of strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise ValueError(f"{what} entry {key!r}: {item!r} is not a string key/value pair")
    return dict(value)


def _toleration(index: int, item: Any) -> k8s.V1Toleration:
    if isinstance(item, k8s.V1Toleration):
        item = k8s.ApiClient().sanitize_for_serialization(item)
    if not isinstance(item, Mapping):
        raise ValueError(f"tolerations[{index}] must be a mapping or V1Toleration, got {type(item).__name__}")
    unknown = sorted(set(item) - set(_TOLERATION_KEYS))
    if unknown:
        raise ValueError(f"tolerations[{index}] has unknown field(s) {unknown}; known: {sorted(_TOLERATION_KEYS)}")
    operator = item.get("operator", "Equal")
    if operator not in _TOLERATION_OPERATORS:
        raise ValueError(f"tolerations[{index}].operator {operator!r} is not one of {sorted(_TOLERATION_OPERATORS)}")
    effect = item.get("effect")
    if effect is not None and effect not in _TOLERATION_EFFECTS:
        raise ValueError(f"tolerations[{index}].effect {effect!r} is not one of {sorted(_TOLERATION_EFFECTS)}")
    if operator == "Exists" and item.get("value"):
        raise ValueError(f"tolerations[{index}]: operator Exists takes no value")
    seconds = item.get("tolerationSeconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
        raise ValueError(f"tolerations[{index}].tolerationSeconds must be an integer, got {seconds!r}")
    return k8s.V1Toleration(**{_TOLERATION_KEYS[k]: v for k, v in item.items()})


def _env_vars(env: Any) -> list[k8s.V1EnvVar]:
    if env is None:
        return []
    if isinstance(env, Mapping):
        env = [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()]
    out = []
    for item in env:
        if not isinstance(item, k8s.V1EnvVar):
            raise ValueError(f"env item {item!r} is not a V1EnvVar (or pass a mapping of strings)")
        if not isinstance(item.name, str) or not _ENV_NAME.match(item.name):
            raise ValueError(f"env name {item.name!r} is not a valid variable name")
        if item.name == "STORAGE_URI":
            raise ValueError("env may not set STORAGE_URI: pass storage_uri instead")
        if item.value_from is None and not isinstance(item.value, str):
            raise ValueError(f"env {item.name!r} value must be a string, got {item.value!r}")
        out.append(item)
    return out


def _pull_secrets(names: Any) -> list[k8s.V1LocalObjectReference]:
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"image_pull_secrets must be a list of Secret names, got {names!r}")
    for i, item in enumerate(names):
        check_name(f"image_pull_secrets[{i}]", item, NAMESPACE_NAME, allow_dots=True)
    return [k8s.V1LocalObjectReference(name=n) for n in dict.fromkeys(names)]


def _resources(resources: Any, gpu: int) -> k8s.V1ResourceRequirements:
    resources = DEFAULT_RESOURCES if resources is None else resources
    if not isinstance(resources, Mapping):
        raise ValueError(f"resources must be a mapping with 'requests'/'limits', got {type(resources).__name__}")
    unknown = sorted(set(resources) - {"requests", "limits"})
    if unknown:
        raise ValueError(f"resources has unknown key(s) {unknown}; use 'requests' and 'limits'")
    parts = {}
    for part in ("requests", "limits"):
        values = _check_str_map(f"resources.{part}", resources.get(part) or {})
        values.pop(GPU_RESOURCE, None)  # the gpu argument decides
        parts[part] = values
    if gpu > 0:
        parts["limits"][GPU_RESOURCE] = str(gpu)
    return k8s.V1ResourceRequirements(requests=parts["requests"] or None, limits=parts["limits"] or None)
