"""``emoflow doctor``: preflight of the cluster in the current kubeconfig before the first run.

Each check prints one ``PASS`` or ``FAIL`` line and, on failure, the fix; the exit code is 1 when
any check failed (2 for bad flags). The checks follow what a run does on the cluster:

- Kubeflow Pipelines: the v2beta1 healthz answers, its ``tag_name`` is at least
  :data:`MIN_KFP_VERSION` (the backend driver applies ``nodeSelectorJson`` / ``tolerationJson``
  since 2.5.0) and its ``multi_user`` flag is the ``--mode`` given.
- KServe: the InferenceService CRD serves v1beta1; the default deployment mode (``deploy`` in
  the ``inferenceservice-config`` ConfigMap); in Knative (Serverless) mode the Knative
  ``config-features`` flags that let an InferenceService carry a node selector and tolerations.
- The run namespace, the pipeline's service account, the predictor's service account, the
  ``emoflow-s3`` Secret and its keys.
- RBAC: SelfSubjectAccessReview as the run's service account (impersonated; a SubjectAccessReview
  when impersonation is not allowed) for what the pipeline pods and the deploy step do.
- GPU nodes with allocatable ``nvidia.com/gpu`` that match the node selector and tolerate every
  NoSchedule / NoExecute taint (Kubernetes' toleration rules).
- The Prometheus Operator's PodMonitor and PrometheusRule CRDs.
- The store and the asset mirror, reached with the Secret's own credentials; the mirror holds a
  manifest for every asset the chosen preset needs.

    emoflow doctor --mode standalone --store s3://emoflow --assets s3://emoflow/assets
    emoflow doctor --mode multi-user --namespace team-a --kfp-host https://kubeflow.example.org/pipeline
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emoflow import runconfig

# The KFP backend applies nodeSelectorJson / tolerationJson (pipeline parameters as pod placement)
# since 2.5.0: kubeflow/pipelines commit fd1b48b (PR #11770, "Add input parameterization for
# various k8s resources"), first in tag 2.5.0; backend/src/v2/driver/k8s.go.
MIN_KFP_VERSION = (2, 5, 0)
# GET /apis/v2beta1/healthz answers {"commit_sha", "tag_name", "multi_user", "pipeline_store"}
# (kubeflow/pipelines backend/src/apiserver/main.go, healthzResponse). In-cluster the API is the
# Service ml-pipeline, port 8888 (manifests/kustomize/base/pipeline/ml-pipeline-apiserver-service.yaml).
KFP_HEALTHZ = "apis/v2beta1/healthz"
KFP_SERVICE = ("kubeflow", "ml-pipeline:8888")
# Who runs pipeline pods, and where: standalone KFP runs them in `kubeflow` as `pipeline-runner`;
# multi-user KFP in the profile namespace as `default-editor`
# (manifests/kustomize/base/installs/multi-user/api-service/params.env DEFAULTPIPELINERUNNERSERVICEACCOUNT).
MODES = ("standalone", "multi-user")
RUN_NAMESPACE = {"standalone": "kubeflow", "multi-user": None}
RUN_SERVICE_ACCOUNT = {"standalone": "pipeline-runner", "multi-user": "default-editor"}
# The Secret every storage step reads as env, and the predictor's service account (INTERFACES.md;
# pipelines/training.py S3_SECRET / S3_SECRET_KEYS, checked equal by tests/test_doctor.py).
S3_SECRET = "emoflow-s3"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EMOFLOW_S3_ENDPOINT", "S3_USE_HTTPS", "AWS_REGION")
PREDICTOR_SERVICE_ACCOUNT = runconfig.BY_NAME["service_account"].default_value()
# What the run's service account must be allowed in the run namespace: (group, resource) -> verbs.
# KFP's launcher reads Secrets / ConfigMaps and watches its pod; the deploy step creates, reads,
# updates and deletes the InferenceService (emoflow.serving.deploy).
RBAC_NEEDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "secrets"): ("get",),
    ("", "configmaps"): ("get",),
    ("", "pods"): ("get", "list", "watch"),
    ("serving.kserve.io", "inferenceservices"): ("create", "get", "list", "update", "patch", "delete"),
}
# KServe: the CRD, and the ConfigMap whose `deploy` key holds {"defaultDeploymentMode": ...}
# (kserve/kserve pkg/apis/serving/v1beta1/configmap.go NewDeployConfig; pkg/constants DeploymentModeType:
# Knative, Standard, ModelMesh; the legacy names Serverless / RawDeployment mean Knative / Standard;
# an empty mode is Standard). Kubeflow installs KServe into `kubeflow`, KServe's own install into `kserve`.
KSERVE_CRD = ("inferenceservices.serving.kserve.io", "v1beta1")
# KServe's pod mutating webhook (storage initializer, agent) has namespaceSelector `control-plane
# DoesNotExist` (kserve config/webhook/manifests.yaml): pods in a namespace with that label key are skipped.
KSERVE_WEBHOOK_SKIP_LABEL = "control-plane"
KSERVE_CONFIGMAP = "inferenceservice-config"
KSERVE_NAMESPACES = ("kserve", "kubeflow")
KSERVE_MODES = {"Knative": "Knative", "Serverless": "Knative", "Standard": "Standard",
                "RawDeployment": "Standard", "": "Standard", "ModelMesh": "ModelMesh"}
# Knative Serving's feature flags (knative/serving pkg/apis/config/features.go): a flag is
# "Enabled", "Allowed" or "Disabled" (case-insensitive; anything else or absent is Disabled), and a
# pod spec field behind a flag is accepted unless the flag is Disabled (pkg/apis/serving/fieldmask.go).
KNATIVE_FEATURES = ("knative-serving", "config-features")
KNATIVE_FLAGS = {"nodeSelector": "kubernetes.podspec-nodeselector", "tolerations": "kubernetes.podspec-tolerations"}
PROMETHEUS_CRDS = (("podmonitors.monitoring.coreos.com", "v1"), ("prometheusrules.monitoring.coreos.com", "v1"))
GPU_RESOURCE = "nvidia.com/gpu"
REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds per Kubernetes API call: a dead endpoint fails, not hangs


@dataclass(frozen=True)
class Result:
    """One check's outcome: a PASS/FAIL line and, on failure, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{'PASS' if self.ok else 'FAIL'}  {self.name:<24} {self.detail}"]
        if not self.ok and self.fix:
            out.append(f"      fix: {self.fix}")
        return out


def passed(name: str, detail: str) -> Result:
    return Result(name, True, detail)


def failed(name: str, detail: str, fix: str) -> Result:
    return Result(name, False, detail, fix)


# --------------------------------------------------------------------------- pure rules


def parse_version(tag: str) -> tuple[int, ...] | None:
    """``2.5.0``, ``v2.14.3``, ``2.15.0-rc.1`` -> (2, 5, 0) ...; None when it is no version."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(tag).strip())
    return tuple(int(g or 0) for g in match.groups()) if match else None


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration tolerates one taint, by Kubernetes' rules (k8s.io/api core/v1
    toleration.go ToleratesTaint): an empty effect matches every effect, an empty key (operator
    Exists) every key; Exists ignores the value, Equal (or no operator) compares it."""
    effect, key = toleration.get("effect") or "", toleration.get("key") or ""
    if effect and effect != taint.get("effect"):
        return False
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taints(taints: Iterable[Mapping], tolerations: Sequence[Mapping]) -> list[Mapping]:
    """The taints that keep a pod off the node: NoSchedule / NoExecute ones no toleration matches
    (PreferNoSchedule only lowers the node's score)."""
    return [t for t in taints or [] if t.get("effect") in ("NoSchedule", "NoExecute")
            and not any(tolerates(tol, t) for tol in tolerations)]


def knative_flag_allows(value: str | None) -> bool:
    return (value or "").strip().lower() in ("enabled", "allowed")


def _quantity(value: Any) -> float:
    from kubernetes.utils import parse_quantity

    try:
        return float(parse_quantity(str(value)))
    except (ValueError, TypeError):
        return 0.0


def _taint_text(taint: Mapping) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


# --------------------------------------------------------------------------- the doctor


@dataclass
class Options:
    mode: str = "standalone"
    namespace: str | None = None
    service_account: str | None = None
    predictor_service_account: str = PREDICTOR_SERVICE_ACCOUNT
    kfp_host: str | None = None
    kfp_token_file: str | None = None
    store: str | None = None
    assets: str | None = None
    preset: str = runconfig.BY_NAME["preset"].default_value()
    architectures: tuple[str, ...] = tuple(runconfig.BY_NAME["architectures"].default_value())
    node_selector: dict | None = None
    tolerations: list | None = None
    s3_endpoint: str | None = None
    kserve_namespace: str | None = None
    gpu_count: str = runconfig.BY_NAME["gpu_count"].default_value()

    def __post_init__(self) -> None:
        from emoflow.serving.isvc import DEFAULT_GPU_NODE_SELECTOR, DEFAULT_GPU_TOLERATIONS

        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r} is not one of {list(MODES)}")
        self.namespace = self.namespace or RUN_NAMESPACE[self.mode]
        if not self.namespace:
            raise ValueError("--namespace is required in multi-user mode: the profile namespace runs are made in")
        self.service_account = self.service_account or RUN_SERVICE_ACCOUNT[self.mode]
        if self.node_selector is None:
            self.node_selector = dict(DEFAULT_GPU_NODE_SELECTOR)
        if self.tolerations is None:
            self.tolerations = [dict(t) for t in DEFAULT_GPU_TOLERATIONS]
        # the same rules as the pipeline's node_selector / tolerations parameters (RunConfigError is a ValueError)
        self.node_selector = runconfig.BY_NAME["node_selector"].validate(self.node_selector)
        self.tolerations = runconfig.BY_NAME["tolerations"].validate(self.tolerations)
        self.gpu_count = runconfig.BY_NAME["gpu_count"].validate(self.gpu_count)
        for i, tol in enumerate(self.tolerations):  # what matching needs on top (toleration.go)
            if tol.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ValueError(f"--tolerations item {i}: operator {tol.get('operator')!r} is not Equal or Exists")
            if not tol.get("key") and tol.get("operator") != "Exists":
                raise ValueError(f"--tolerations item {i} {tol!r}: an empty key needs operator Exists")


class Doctor:
    """Runs the checks against one cluster. ``api_client`` is a ``kubernetes.client.ApiClient``
    (default: the current kubeconfig context); ``http_get(url, headers)`` -> (status, body text)
    reaches a KFP host given by URL (default: httpx)."""

    def __init__(self, options: Options, *, api_client: Any = None,
                 http_get: Callable[[str, dict], tuple[int, str]] | None = None):
        from kubernetes import client as k8s

        self.o = options
        self.k8s = k8s
        self.api = api_client or _kubeconfig_client()
        self.core = k8s.CoreV1Api(self.api)
        self.crds = k8s.ApiextensionsV1Api(self.api)
        self.http_get = http_get or _http_get
        self.deployment_mode: str | None = None
        self._secret: dict[str, str] | None = None

    # ---- helpers
    def _read(self, fn: Callable, *args) -> tuple[Any, Any]:
        """(object, None) or (None, ApiException / connection error)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT), None
        except ApiException as exc:
            return None, exc
        except Exception as exc:  # urllib3 connection errors and the like: reported, never raised
            return None, exc

    @staticmethod
    def _why(exc: Any) -> str:
        status = getattr(exc, "status", None)
        if status is None:
            return f"cannot reach the Kubernetes API: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        try:
            message = json.loads(exc.body).get("message") or exc.reason
        except (TypeError, ValueError, AttributeError):
            message = exc.reason
        return f"HTTP {status}: {message}"

    # ---- checks
    def check_kfp(self) -> Result:
        name = "KFP API"
        if self.o.kfp_host:
            url = f"{self.o.kfp_host.rstrip('/')}/{KFP_HEALTHZ}"
            try:
                headers = _kfp_headers(self.o.kfp_token_file)
            except OSError as exc:
                return failed(name, f"cannot read the KFP token file: {exc}",
                              "pass an existing token file as --kfp-token-file")
            try:
                status, body = self.http_get(url, headers)
            except Exception as exc:
                return failed(name, f"{url}: cannot connect ({type(exc).__name__}: {exc})",
                              "pass the KFP API endpoint as --kfp-host (e.g. https://<kubeflow host>/pipeline) "
                              "reachable from here, or omit it to go through the Kubernetes API service proxy")
        else:
            ns, svc = KFP_SERVICE
            url = f"service {ns}/{svc} via the Kubernetes API proxy"
            resp, err = self._read(lambda **kw: self.core.connect_get_namespaced_service_proxy_with_path(
                svc, ns, KFP_HEALTHZ, _preload_content=False, **kw))
            if err is not None:
                return failed(name, f"{url}: {self._why(err)}",
                              "install Kubeflow Pipelines >= 2.5 or pass its API endpoint as --kfp-host")
            status, body = resp.status, resp.data.decode("utf-8", "replace")
        if status != 200:
            return failed(name, f"{url}: HTTP {status} from /{KFP_HEALTHZ}",
                          "check --kfp-host (it must be the KFP API root, e.g. https://<host>/pipeline) "
                          "and your credentials (a bearer token file as --kfp-token-file, as for `emoflow submit`)")
        try:
            health = json.loads(body)
            tag, multi_user = health["tag_name"], health["multi_user"]
        except (ValueError, KeyError, TypeError):
            return failed(name, f"{url}: /{KFP_HEALTHZ} is not a KFP healthz answer: {body[:120]!r}",
                          "point --kfp-host at the Kubeflow Pipelines API, not the central dashboard")
        version = parse_version(tag)
        want = ".".join(map(str, MIN_KFP_VERSION))
        if version is None or version < MIN_KFP_VERSION:
            return failed(name, f"{url}: Kubeflow Pipelines {tag!r} (commit {health.get('commit_sha')}); "
                          f"emoflow needs >= {want}",
                          f"upgrade Kubeflow Pipelines to {want} or later: older backends ignore the "
                          "training tasks' nodeSelectorJson / tolerationJson (GPU placement)")
        actual = "multi-user" if multi_user else "standalone"
        if actual != self.o.mode:
            return failed(name, f"{url}: Kubeflow Pipelines {tag} runs in {actual} mode, --mode says {self.o.mode}",
                          f"rerun with --mode {actual} (and apply manifests/overlays/{actual})")
        return passed(name, f"Kubeflow Pipelines {tag} ({actual}) at {url}")

    def check_kserve(self) -> list[Result]:
        crd_name, version = KSERVE_CRD
        crd, err = self._read(self.crds.read_custom_resource_definition, crd_name)
        if err is not None:
            return [failed("KServe CRD", f"{crd_name}: {self._why(err)}",
                           "install KServe 0.21 (its CRDs and controller), see https://kserve.github.io/website")]
        served = [v.name for v in crd.spec.versions if v.served]
        results = [passed("KServe CRD", f"{crd_name} serves {', '.join(served)}") if version in served else
                   failed("KServe CRD", f"{crd_name} serves {served}, not {version}", "upgrade KServe to 0.21")]
        namespaces = [self.o.kserve_namespace] if self.o.kserve_namespace else list(KSERVE_NAMESPACES)
        errors = []
        for ns in namespaces:
            cm, err = self._read(self.core.read_namespaced_config_map, KSERVE_CONFIGMAP, ns)
            if err is None:
                results.append(self._deployment_mode(cm, ns))
                return results
            errors.append(f"{ns}: {self._why(err)}")
        results.append(failed("KServe deployment mode", f"ConfigMap {KSERVE_CONFIGMAP} not readable ({'; '.join(errors)})",
                              "pass --kserve-namespace (the namespace the KServe controller runs in) "
                              "and make sure you may read its ConfigMaps"))
        return results

    def _deployment_mode(self, cm: Any, ns: str) -> Result:
        name = "KServe deployment mode"
        raw = (cm.data or {}).get("deploy")
        try:
            mode = "" if raw is None else json.loads(raw).get("defaultDeploymentMode", "")
        except (ValueError, AttributeError):
            return failed(name, f"{ns}/{KSERVE_CONFIGMAP} key deploy is not JSON: {raw[:80]!r}",
                          "fix the deploy key: {\"defaultDeploymentMode\": \"Knative\"} or \"Standard\"")
        if mode not in KSERVE_MODES:
            return failed(name, f"{ns}/{KSERVE_CONFIGMAP}: unknown defaultDeploymentMode {mode!r}",
                          "set it to Knative (Serverless) or Standard (RawDeployment)")
        self.deployment_mode = KSERVE_MODES[mode]
        if self.deployment_mode == "ModelMesh":
            return failed(name, f"{ns}/{KSERVE_CONFIGMAP}: ModelMesh; emoflow's predictor is a custom container",
                          "set defaultDeploymentMode to Knative or Standard")
        shown = f"{mode} = {self.deployment_mode}" if mode and mode != self.deployment_mode else self.deployment_mode
        note = "; canary_traffic_percent needs Knative mode" if self.deployment_mode == "Standard" else ""
        return passed(name, f"{shown} ({ns}/{KSERVE_CONFIGMAP}"
                      + (", no deploy key: KServe's default" if raw is None else "") + f"){note}")

    def check_knative_flags(self) -> Result:
        name = "Knative feature flags"
        needed = [flag for field, flag in KNATIVE_FLAGS.items()
                  if (self.o.node_selector if field == "nodeSelector" else self.o.tolerations)]
        if self.deployment_mode != "Knative":
            return passed(name, f"not needed ({self.deployment_mode or 'unknown'} mode)")
        if not needed:
            return passed(name, "not needed (no node selector or tolerations)")
        ns, cm_name = KNATIVE_FEATURES
        cm, err = self._read(self.core.read_namespaced_config_map, cm_name, ns)
        if err is not None:
            return failed(name, f"{ns}/{cm_name}: {self._why(err)}",
                          "KServe is in Knative mode: install Knative Serving (its config-features ConfigMap)")
        data = cm.data or {}
        off = [f"{flag}={data.get(flag, '<unset>')}" for flag in needed if not knative_flag_allows(data.get(flag))]
        if off:
            patch = json.dumps({"data": {flag: "enabled" for flag in needed}})
            return failed(name, f"{ns}/{cm_name}: {', '.join(off)}: Knative rejects an InferenceService "
                          "with a node selector / tolerations",
                          f"kubectl -n {ns} patch configmap {cm_name} --type merge -p '{patch}'")
        return passed(name, ", ".join(f"{flag}={data[flag]}" for flag in needed))

    def check_namespace_and_accounts(self) -> list[Result]:
        ns = self.o.namespace
        namespace, err = self._read(self.core.read_namespace, ns)
        if err is not None:
            fix = (f"create the profile for namespace {ns}" if self.o.mode == "multi-user"
                   else "install Kubeflow Pipelines (standalone runs in namespace kubeflow) or pass --namespace")
            return [failed("run namespace", f"{ns}: {self._why(err)}", fix)]
        labels = namespace.metadata.labels or {}
        if KSERVE_WEBHOOK_SKIP_LABEL in labels:
            results = [failed("run namespace", f"{ns} is labelled {KSERVE_WEBHOOK_SKIP_LABEL}="
                              f"{labels[KSERVE_WEBHOOK_SKIP_LABEL]}: KServe's pod webhook skips it, so a predictor "
                              "there gets no storage initializer and starts without its model",
                              "serve from another namespace (the pipeline's namespace parameter), or run in a "
                              "profile namespace (--mode multi-user)")]
        else:
            results = [passed("run namespace", ns)]
        for what, sa, fix in (
            ("pipeline service account", self.o.service_account,
             f"pass the account runs use as --service-account (KFP default: {RUN_SERVICE_ACCOUNT[self.o.mode]})"),
            ("predictor service account", self.o.predictor_service_account,
             f"kubectl apply -k manifests/overlays/{self.o.mode} (it creates {self.o.predictor_service_account})"),
        ):
            obj, err = self._read(self.core.read_namespaced_service_account, sa, ns)
            if err is not None:
                results.append(failed(what, f"{ns}/{sa}: {self._why(err)}", fix))
                continue
            detail = f"{ns}/{sa}"
            if sa == self.o.predictor_service_account:
                listed = [s.name for s in obj.secrets or []]
                if S3_SECRET not in listed:
                    results.append(failed(what, f"{detail} does not list Secret {S3_SECRET} (has {listed}); KServe's "
                                          "storage initializer takes S3 credentials from the account's secrets",
                                          f"kubectl -n {ns} patch serviceaccount {sa} -p "
                                          f"'{{\"secrets\": [{{\"name\": \"{S3_SECRET}\"}}]}}'"))
                    continue
                detail += f" (secrets: {', '.join(listed)})"
            results.append(passed(what, detail))
        results.append(self.check_secret())
        return results

    def check_secret(self) -> Result:
        name, ns = "S3 secret", self.o.namespace
        secret, err = self._read(self.core.read_namespaced_secret, S3_SECRET, ns)
        create = (f"kubectl -n {ns} create secret generic {S3_SECRET} "
                  + " ".join(f"--from-literal={k}=..." for k in S3_SECRET_KEYS))
        if err is not None:
            return failed(name, f"{ns}/{S3_SECRET}: {self._why(err)}", create)
        values = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.data or {}).items()}
        missing = [k for k in S3_SECRET_KEYS if not values.get(k)]
        placeholder = [k for k in S3_SECRET_KEYS if values.get(k) == "REPLACE_ME"]
        if missing or placeholder:
            return failed(name, f"{ns}/{S3_SECRET}: " + "; ".join(
                filter(None, [f"missing or empty keys {missing}" if missing else "",
                              f"still REPLACE_ME: {placeholder}" if placeholder else ""])),
                f"{create} --dry-run=client -o yaml | kubectl apply -f -")
        self._secret = values
        return passed(name, f"{ns}/{S3_SECRET} has {', '.join(S3_SECRET_KEYS)}")

    def check_rbac(self) -> Result:
        name, ns, sa = "RBAC", self.o.namespace, self.o.service_account
        user = f"system:serviceaccount:{ns}:{sa}"
        denied, how = [], "SelfSubjectAccessReview as " + user
        for (group, resource), verbs in RBAC_NEEDS.items():
            for verb in verbs:
                attrs = {"namespace": ns, "verb": verb, "group": group, "resource": resource}
                allowed, err = self._access_review(user, attrs)
                if err is not None:
                    return failed(name, f"cannot review the rights of {user}: {err}",
                                  "run doctor with a kubeconfig that may impersonate service accounts or create "
                                  "subjectaccessreviews (a cluster admin's)")
                if allowed is None:
                    how = "SubjectAccessReview for " + user
                    allowed = self._subject_access_review(user, ns, attrs)
                    if isinstance(allowed, str):
                        return failed(name, f"cannot review the rights of {user}: {allowed}",
                                      "run doctor with a kubeconfig that may impersonate service accounts or "
                                      "create subjectaccessreviews (a cluster admin's)")
                if not allowed:
                    denied.append(f"{verb} {resource}{'.' + group if group else ''}")
        if denied:
            return failed(name, f"{user} may not: {', '.join(denied)} (in {ns})",
                          f"kubectl apply -k manifests/overlays/{self.o.mode} (its Role and RoleBinding grant "
                          f"{sa} the InferenceService rights), or bind an equivalent Role")
        return passed(name, f"{user} may do what the pipeline and deploy do in {ns} ({how})")

    def _access_review(self, user: str, attrs: dict) -> tuple[bool | None, str | None]:
        """A SelfSubjectAccessReview made as ``user`` (impersonated): (allowed, None); (None, None)
        when impersonation is forbidden; (None, error) on other errors.

        Impersonating a service account's user name without Impersonate-Group headers gives the
        request that account's groups too (k8s.io/apiserver pkg/endpoints/filters/impersonation.go),
        so the review sees exactly the rights the account's pods have; it needs the ``impersonate``
        verb on ``serviceaccounts`` in that namespace."""
        from kubernetes.client.exceptions import ApiException

        api = self.k8s.ApiClient(self.api.configuration)
        api.set_default_header("Impersonate-User", user)
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}
        try:
            review = self.k8s.AuthorizationV1Api(api).create_self_subject_access_review(
                body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 403:
                return None, None
            return None, self._why(exc)
        except Exception as exc:
            return None, self._why(exc)
        finally:
            api.close()
        return bool(review.status and review.status.allowed), None

    def _subject_access_review(self, user: str, ns: str, attrs: dict) -> bool | str:
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "resourceAttributes": attrs}}
        review, err = self._read(self.k8s.AuthorizationV1Api(self.api).create_subject_access_review, body)
        if err is not None:
            return self._why(err)
        return bool(review.status and review.status.allowed)

    def check_gpu_nodes(self) -> Result:
        name = "GPU nodes"
        nodes, err = self._read(self.core.list_node)
        if err is not None:
            return failed(name, self._why(err), "you need to list nodes (a cluster-wide read) to check GPU placement")
        selector, tolerations = self.o.node_selector, self.o.tolerations
        fits, reasons, blocking = [], [], {}
        for node in nodes.items:
            gpus = _quantity((node.status.allocatable or {}).get(GPU_RESOURCE, 0)) if node.status else 0
            if gpus <= 0:
                continue
            labels = node.metadata.labels or {}
            why = [f"label {k}={labels.get(k, '<unset>')} (selector wants {v})"
                   for k, v in selector.items() if labels.get(k) != v]
            if gpus < int(self.o.gpu_count):
                why.append(f"{int(gpus)} allocatable {GPU_RESOURCE} < gpu_count {self.o.gpu_count}")
            taints = [t.to_dict() for t in (node.spec.taints or [])] if node.spec else []
            for taint in untolerated_taints(taints, tolerations):
                why.append(f"taint {_taint_text(taint)} not tolerated")
                blocking[(taint.get("key"), taint.get("effect"))] = None
            if node.spec and node.spec.unschedulable:
                why.append("cordoned")
            if why:
                reasons.append(f"{node.metadata.name} ({int(gpus)} GPU): {'; '.join(why)}")
            else:
                fits.append(f"{node.metadata.name} ({int(gpus)} GPU)")
        if fits:
            return passed(name, f"{len(fits)} node(s) fit selector {json.dumps(selector)} and the tolerations: "
                          + ", ".join(fits))
        if int(self.o.gpu_count) == 0:
            return passed(name, "not needed (gpu_count 0)")
        if not reasons:
            return failed(name, f"no node has allocatable {GPU_RESOURCE}",
                          "install the NVIDIA GPU operator / device plugin on the GPU nodes")
        fix = ("pass the GPU nodes' labels as --node-selector and tolerations for their taints as --tolerations "
               "(the same JSON as the pipeline's node_selector / tolerations parameters)")
        if blocking:
            wanted = tolerations + [{"key": k, "operator": "Exists", "effect": e} for k, e in blocking]
            fix += f", e.g. --tolerations '{json.dumps(wanted)}'"
        return failed(name, "no GPU node fits: " + " | ".join(reasons), fix)

    def check_prometheus(self) -> list[Result]:
        results = []
        for crd_name, version in PROMETHEUS_CRDS:
            crd, err = self._read(self.crds.read_custom_resource_definition, crd_name)
            if err is not None:
                results.append(failed("Prometheus Operator CRD", f"{crd_name}: {self._why(err)}",
                                      "install the Prometheus Operator (e.g. kube-prometheus-stack) before "
                                      "kubectl apply -k manifests"))
            elif version not in [v.name for v in crd.spec.versions if v.served]:
                results.append(failed("Prometheus Operator CRD", f"{crd_name} does not serve {version}",
                                      "upgrade the Prometheus Operator"))
            else:
                results.append(passed("Prometheus Operator CRD", f"{crd_name} ({version})"))
        return results

    def _s3_options(self) -> dict:
        from emoflow.storage.s3 import _parse_bool  # one reading of S3_USE_HTTPS, the store's

        values = self._secret or {}
        return {"endpoint": self.o.s3_endpoint or values["EMOFLOW_S3_ENDPOINT"],
                "access_key": values["AWS_ACCESS_KEY_ID"], "secret_key": values["AWS_SECRET_ACCESS_KEY"],
                "secure": _parse_bool("S3_USE_HTTPS", values.get("S3_USE_HTTPS") or "1"),
                "region": values.get("AWS_REGION") or None, "retries": 0}

    def check_store(self) -> Result:
        name = "store"
        if not self.o.store:
            return passed(name, "not checked (no --store)")
        if self._secret is None:
            return failed(name, f"{self.o.store}: not checked, the {S3_SECRET} Secret is not usable",
                          "fix the S3 secret above first")
        from emoflow.storage import StoreError, open_store

        try:
            store = open_store(self.o.store, **self._s3_options())
            keys = store.list("registry/")
        except StoreError as exc:
            return failed(name, f"{self.o.store} with the {S3_SECRET} credentials: {exc}",
                          "check the endpoint and keys in the Secret, that the bucket exists, and that the "
                          "endpoint resolves from here (--s3-endpoint overrides it for this check)")
        return passed(name, f"{self.o.store} listed with the {S3_SECRET} credentials ({len(keys)} registry objects)")

    def check_assets(self) -> Result:
        name = "asset mirror"
        from emoflow import assets

        if not hasattr(assets, "assets_for") or not hasattr(assets, "read_manifest"):
            return failed(name, "not checked: this emoflow's emoflow.assets has no mirror support "
                          "(assets_for / read_manifest)", "update emoflow to a version with `emoflow assets push`")
        try:
            needed = self._needed_assets()
        except (OSError, ValueError, KeyError) as exc:
            return failed(name, f"cannot tell which assets preset {self.o.preset!r} needs: {exc}",
                          "pass an existing --preset and --architectures")
        if not needed:
            return passed(name, f"preset {self.o.preset} ({', '.join(self.o.architectures)}) needs no offline assets")
        if not self.o.assets:
            return failed(name, f"preset {self.o.preset} needs {', '.join(needed)} but no --assets mirror was given",
                          "emoflow assets push s3://<bucket>/assets, then pass it as --assets (and as the "
                          "pipeline's assets parameter)")
        if self._secret is None and self.o.assets.startswith("s3://"):
            return failed(name, f"{self.o.assets}: not checked, the {S3_SECRET} Secret is not usable",
                          "fix the S3 secret above first")
        from emoflow.storage import StoreError, open_store

        try:
            mirror = open_store(self.o.assets, **(self._s3_options() if self.o.assets.startswith("s3://") else {}))
            absent = [n for n in needed if assets.read_manifest(mirror, n, self.o.assets) is None]
        except (StoreError, assets.AssetMissing, RuntimeError) as exc:
            return failed(name, f"{self.o.assets} with the {S3_SECRET} credentials: {exc}",
                          "check the mirror URI and that the Secret's keys may read it")
        if absent:
            return failed(name, f"{self.o.assets} has no manifest for {', '.join(absent)} "
                          f"(preset {self.o.preset} needs {', '.join(needed)})",
                          f"emoflow assets push {self.o.assets} {' '.join(absent)}")
        return passed(name, f"{self.o.assets} holds {', '.join(needed)} (preset {self.o.preset})")

    def _needed_assets(self) -> list[str]:
        from emoflow import assets
        from emoflow.models.registry import load_preset

        return sorted({n for arch in self.o.architectures for n in assets.assets_for(load_preset(arch, self.o.preset))})

    def run(self, out: Callable[[str], None] = print) -> list[Result]:
        """Every check, printed as it completes (long waits on a dead endpoint show where)."""
        steps: list[Callable[[], Result | list[Result]]] = [
            self.check_kfp, self.check_kserve, self.check_knative_flags, self.check_namespace_and_accounts,
            self.check_rbac, self.check_gpu_nodes, self.check_prometheus, self.check_store, self.check_assets,
        ]
        results: list[Result] = []
        for step in steps:
            got = step()
            for result in got if isinstance(got, list) else [got]:
                results.append(result)
                for line in result.lines():
                    out(line)
        return results


def _kubeconfig_client():
    """A client for the current kubeconfig context ($KUBECONFIG, read now), else the in-cluster account."""
    import os

    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    except config.ConfigException as exc:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise ValueError(f"no usable kubeconfig ({exc}) and not running in a pod: set KUBECONFIG") from None
    return client.ApiClient()


def _kfp_headers(token_file: str | None) -> dict:
    """A bearer token for the KFP API: ``token_file`` (``--kfp-token-file``, as ``emoflow submit``
    takes it), else the file named by KF_PIPELINES_SA_TOKEN_PATH (the kfp SDK's variable)."""
    import os

    path = token_file or os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:  # a missing file is the check's failure, named
        return {"Authorization": f"Bearer {f.read().strip()}"}


def _http_get(url: str, headers: dict) -> tuple[int, str]:
    import httpx

    response = httpx.get(url, headers=headers, timeout=15, follow_redirects=False)
    return response.status_code, response.text


def _json_arg(flag: str, kind: type):
    def parse(text: str):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag} is not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON {kind.__name__}, got {text!r}")
        return value

    return parse


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        options = Options(mode=args.mode, namespace=args.namespace, service_account=args.service_account,
                          predictor_service_account=args.predictor_service_account, kfp_host=args.kfp_host,
                          kfp_token_file=args.kfp_token_file,
                          store=args.store, assets=args.assets, preset=args.preset,
                          architectures=tuple(a.strip() for a in args.architectures.split(",") if a.strip()),
                          node_selector=args.node_selector, tolerations=args.tolerations,
                          s3_endpoint=args.s3_endpoint, kserve_namespace=args.kserve_namespace,
                          gpu_count=args.gpu_count)
    except ValueError as exc:
        print(f"emoflow doctor: {exc}", file=sys.stderr)
        return 2
    try:
        doctor = Doctor(options)
    except ValueError as exc:
        print(f"emoflow doctor: {exc}", file=sys.stderr)
        return 2
    print(f"emoflow doctor: KFP {options.mode}, runs in namespace {options.namespace} as "
          f"{options.service_account}")
    results = doctor.run()
    bad = [r for r in results if not r.ok]
    print(f"\n{len(results)} checks, {len(bad)} failed" + (": " + ", ".join(dict.fromkeys(r.name for r in bad))
                                                            if bad else ": ready for `emoflow submit`"))
    return 1 if bad else 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="preflight of the cluster in the current kubeconfig before a run",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="standalone", help="how Kubeflow Pipelines is installed")
    p.add_argument("--namespace", help="where runs go (default: kubeflow standalone; required multi-user)")
    p.add_argument("--service-account", help="account runs use (default: pipeline-runner / default-editor)")
    p.add_argument("--predictor-service-account", default=PREDICTOR_SERVICE_ACCOUNT,
                   help="account of the InferenceService (default %(default)s)")
    p.add_argument("--kfp-host", help="KFP API endpoint (default: the ml-pipeline Service via the Kubernetes API)")
    p.add_argument("--kfp-token-file", metavar="PATH", help="bearer token for --kfp-host (as for `emoflow submit`)")
    p.add_argument("--store", help="artifact store URI the runs use, e.g. s3://emoflow")
    p.add_argument("--assets", help="offline-asset mirror URI, e.g. s3://emoflow/assets")
    p.add_argument("--preset", default=Options.preset, help="preset whose assets must be in the mirror (default %(default)s)")
    p.add_argument("--architectures", default=",".join(Options.architectures), help="comma-separated (default %(default)s)")
    p.add_argument("--node-selector", type=_json_arg("--node-selector", dict), default=None,
                   help="GPU node selector JSON (default: the deploy step's)")
    p.add_argument("--tolerations", type=_json_arg("--tolerations", list), default=None,
                   help="tolerations JSON list (default: the deploy step's)")
    p.add_argument("--gpu-count", default=Options.gpu_count,
                   help="GPUs a training task / the predictor asks for (default %(default)s; 0 skips the GPU check)")
    p.add_argument("--s3-endpoint", help="reach the store through this host:port instead of the Secret's")
    p.add_argument("--kserve-namespace", help="namespace of KServe's inferenceservice-config (default: kserve, kubeflow)")
    p.set_defaults(func=cmd_doctor)
