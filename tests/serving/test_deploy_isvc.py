"""The InferenceService the deploy step produces, field by field, and the create/replace/wait/canary
logic against a real ``kserve.KServeClient`` talking HTTP to a small fake Kubernetes API on 127.0.0.1
(no cluster here). The fake records every call, keeps ``resourceVersion`` like the API server (a PUT
with a stale one gets 409 Conflict), applies JSON merge patches, bumps ``metadata.generation`` on
spec changes, plays KServe's webhook (a finalizer and the deployment-mode annotation on create) and
the KServe controller: Ready after a few reads, never Ready, or a failed load.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emoflow import images
from emoflow.serving import deploy as d

URI = "s3://emoflow/registry/emoflow-a1/v3/"
IMAGE = "registry.example.org/ml/emoflow-serve-gpu:1.2.3"
CPU_IMAGE = "registry.example.org/ml/emoflow-serve:1.2.3"


@pytest.fixture(autouse=True)
def _default_image_env(monkeypatch):
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    monkeypatch.delenv(images.TAG_ENV, raising=False)


def _container(m: dict) -> dict:
    containers = m["spec"]["predictor"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --------------------------------------------------------------------------- building


def test_default_gpu_service_field_by_field():
    isvc = d.build_inference_service("emo-a1", "team-x", URI)
    m = d.to_manifest(isvc)
    assert m["apiVersion"] == "serving.kserve.io/v1beta1"
    assert m["kind"] == "InferenceService"
    assert m["metadata"]["name"] == "emo-a1" and m["metadata"]["namespace"] == "team-x"
    pred = m["spec"]["predictor"]
    c = _container(m)
    assert c["name"] == "kserve-container"
    assert c["image"] == images.image("serve-gpu") == f"ghcr.io/your-org/emoflow-serve-gpu:{images.tag()}"
    # storage: KServe's initializer reads STORAGE_URI and fills /mnt/models for the predictor
    assert _env(c) == {"STORAGE_URI": URI}
    assert c["args"] == ["--model_name", "emo-a1", "--storage_uri", "/mnt/models", "--http_port", "8080"]
    assert c["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pred["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pred["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pred["serviceAccountName"] == "emoflow-s3"
    assert pred["minReplicas"] == 1 and pred["maxReplicas"] == 1
    assert "canaryTrafficPercent" not in pred
    assert d.unknown_fields(m) == []


def test_custom_gpu_settings_field_by_field():
    isvc = d.build_inference_service(
        "emo", "ml", URI, gpu=2, image="registry.example.org/emo/serve:1.2.3",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "gpu-pool", "operator": "Equal", "value": "l4", "effect": "NoSchedule"},
                     {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
        service_account="s3-reader", min_replicas=2, max_replicas=5, canary_traffic_percent=10,
        resources={"requests": {"cpu": "2", "memory": "6Gi", "nvidia.com/gpu": "9"}, "limits": {"memory": "12Gi"}},
        env={"EMOFLOW_LOG": "debug"},
    )
    m = d.to_manifest(isvc)
    pred, c = m["spec"]["predictor"], _container(m)
    assert c["image"] == "registry.example.org/emo/serve:1.2.3"
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "6Gi"},
                              "limits": {"memory": "12Gi", "nvidia.com/gpu": "2"}}
    assert pred["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pred["tolerations"] == [
        {"key": "gpu-pool", "operator": "Equal", "value": "l4", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    ]
    assert pred["serviceAccountName"] == "s3-reader"
    assert (pred["minReplicas"], pred["maxReplicas"]) == (2, 5)
    assert pred["canaryTrafficPercent"] == 10
    assert _env(c) == {"STORAGE_URI": URI, "EMOFLOW_LOG": "debug"}
    assert d.unknown_fields(m) == []


def test_cpu_service_has_no_gpu_anything():
    m = d.to_manifest(d.build_inference_service("emo", "ml", URI, gpu=0))
    pred, c = m["spec"]["predictor"], _container(m)
    assert c["image"] == images.image("serve")
    assert "nvidia.com/gpu" not in json.dumps(m)
    assert "nodeSelector" not in pred and "tolerations" not in pred
    # explicit empty selections on a GPU service are honoured too
    m = d.to_manifest(d.build_inference_service("emo", "ml", URI, node_selector={}, tolerations=[]))
    assert "nodeSelector" not in m["spec"]["predictor"] and "tolerations" not in m["spec"]["predictor"]
    assert _container(m)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_image_reference_follows_env(monkeypatch):
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.org:5000/ml")
    monkeypatch.setenv(images.TAG_ENV, "0.1.0-rc1")
    m = d.to_manifest(d.build_inference_service("emo", "ml", URI))
    assert _container(m)["image"] == "registry.example.org:5000/ml/emoflow-serve-gpu:0.1.0-rc1"


def test_canary_zero_and_hundred_are_kept():
    for pct in (0, 100):
        m = d.to_manifest(d.build_inference_service("emo", "ml", URI, canary_traffic_percent=pct))
        assert m["spec"]["predictor"]["canaryTrafficPercent"] == pct


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": "Emo_A1"}, "name"),
    ({"name": "x" * 64}, "name"),
    ({"namespace": "-bad"}, "namespace"),
    ({"storage_uri": "/local/path"}, "storage_uri"),
    ({"storage_uri": "s3://only-bucket"}, "bucket only"),
    ({"storage_uri": "ftp://host/x"}, "storage_uri"),
    ({"gpu": -1}, "gpu"),
    ({"gpu": True}, "gpu"),
    ({"gpu": 1.5}, "gpu"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
    ({"max_replicas": 0}, "max_replicas"),
    ({"canary_traffic_percent": 101}, "canary_traffic_percent"),
    ({"canary_traffic_percent": -5}, "canary_traffic_percent"),
    ({"image": "ghcr.io/x/serve"}, "no tag"),
    ({"image": "ghcr.io/x/serve:latest"}, "latest"),
    ({"node_selector": {"a": 1}}, "node_selector"),
    ({"node_selector": ["a"]}, "node_selector"),
    ({"tolerations": [{"key": "a", "operater": "Exists"}]}, "operater"),
    ({"tolerations": [{"key": "a", "operator": "Maybe"}]}, "Maybe"),
    ({"tolerations": [{"key": "a", "effect": "NoRun"}]}, "NoRun"),
    ({"tolerations": [{"key": "a", "operator": "Exists", "value": "v"}]}, "Exists takes no value"),
    ({"tolerations": ["gpu"]}, "tolerations[0]"),
    ({"service_account": "Bad Account"}, "service_account"),
    ({"resources": {"limit": {"cpu": "1"}}}, "limit"),
    ({"resources": {"limits": {"cpu": 2}}}, "resources.limits"),
    ({"env": {"STORAGE_URI": "s3://x/y"}}, "STORAGE_URI"),
    ({"env": {"1BAD": "x"}}, "1BAD"),
    ({"env": {"OK": 3}}, "OK"),
])
def test_bad_arguments_are_named(kwargs, needle):
    args = {"name": "emo", "namespace": "ml", "storage_uri": URI}
    args.update(kwargs)
    with pytest.raises(ValueError, match=None) as err:
        d.build_inference_service(args.pop("name"), args.pop("namespace"), args.pop("storage_uri"), **args)
    assert needle in str(err.value)


def test_unknown_fields_finds_typos_and_wrong_types():
    m = d.to_manifest(d.build_inference_service("emo", "ml", URI))
    bad = copy.deepcopy(m)
    bad["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    bad["spec"]["predictor"]["minReplicas"] = "1"
    bad["spec"]["predictor"]["canaryTraficPercent"] = 10
    bad["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    problems = d.unknown_fields(bad)
    assert sorted(problems) == sorted([
        "spec.predictor.containers[0].imagePullPolicyy: unknown field of V1Container",
        "spec.predictor.minReplicas: expected int, got str '1'",
        "spec.predictor.canaryTraficPercent: unknown field of V1beta1PredictorSpec",
        "spec.predictor.containers[0].readinessProbe.httpGet.paht: unknown field of V1HTTPGetAction",
    ])


def test_render_yaml_round_trips():
    import yaml

    isvc = d.build_inference_service("emo", "ml", URI, canary_traffic_percent=25)
    assert yaml.safe_load(d.render_yaml(isvc)) == d.to_manifest(isvc)


@pytest.mark.parametrize("given, stored", [
    ("s3://emoflow/registry/emoflow-a1/v1", "s3://emoflow/registry/emoflow-a1/v1/"),
    ("s3://emoflow/registry/emoflow-a1/v1/", "s3://emoflow/registry/emoflow-a1/v1/"),
    ("s3://emoflow/registry/emoflow-a1/v1//", "s3://emoflow/registry/emoflow-a1/v1/"),
    ("gs://models/registry/emoflow-a1/v2", "gs://models/registry/emoflow-a1/v2/"),
    ("pvc://models/emoflow-a1/v2", "pvc://models/emoflow-a1/v2"),
    ("https://models.example.org/emoflow.tar.gz", "https://models.example.org/emoflow.tar.gz"),
])
def test_object_store_storage_uri_ends_with_a_slash(given, stored):
    m = d.to_manifest(d.build_inference_service("emo", "ml", given))
    assert _env(_container(m))["STORAGE_URI"] == stored


def test_why_the_slash_matters_kserve_downloads_by_prefix():
    """KServe's storage initializer keeps every key that starts with the URI's path (our pinned fact:
    kserve v0.20.0 python/storage/kserve_storage/kserve_storage.py, Storage._download_s3,
    ``bucket.objects.filter(Prefix=bucket_path)``); version v1 must not pull in v10..v19."""
    keys = ["registry/emoflow-a1/v1/model/weights.safetensors", "registry/emoflow-a1/v10/model/weights.safetensors",
            "registry/emoflow-a1/v12/model/config.json"]

    def downloaded(uri):
        prefix = uri.split("://", 1)[1].split("/", 1)[1]
        return [k for k in keys if k.startswith(prefix)]

    assert len(downloaded("s3://emoflow/registry/emoflow-a1/v1")) == 3  # the bug: v10 and v12 come too
    uri = _env(_container(d.to_manifest(d.build_inference_service(
        "emo", "ml", "s3://emoflow/registry/emoflow-a1/v1"))))["STORAGE_URI"]
    assert downloaded(uri) == keys[:1]


def test_pull_secrets_assets_and_metrics_fields():
    m = d.to_manifest(d.build_inference_service(
        "emo", "ml", URI, image_pull_secrets=["regcred", "mirror-cred", "regcred"], assets="s3://emoflow/assets"))
    pred, c = m["spec"]["predictor"], _container(m)
    assert pred["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
    assert _env(c) == {"STORAGE_URI": URI, "EMOFLOW_ASSETS_URI": "s3://emoflow/assets"}
    # the predictor reads the mirror with the pipeline's S3 credentials (every key of the Secret)
    assert c["envFrom"] == [{"secretRef": {"name": "emoflow-s3", "optional": False}}]
    # scraping: a named port (kept in RawDeployment mode, renamed user-port by Knative), our labels
    # on the predictor pods, and KServe's annotations naming the metrics port and path
    assert c["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]
    assert pred["labels"] == d.LABELS
    assert pred["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}
    assert d.unknown_fields(m) == []
    plain = d.to_manifest(d.build_inference_service("emo", "ml", URI))
    assert "imagePullSecrets" not in plain["spec"]["predictor"] and "envFrom" not in _container(plain)
    assert "EMOFLOW_ASSETS_URI" not in _env(_container(plain))


def test_namespace_none_gives_a_namespace_neutral_manifest():
    m = d.to_manifest(d.build_inference_service("emo", None, URI))
    assert "namespace" not in m["metadata"]
    assert d.to_manifest(d.default_inference_service())["metadata"] == {"labels": d.LABELS, "name": "emoflow"}


@pytest.mark.parametrize("kwargs, needle", [
    ({"image_pull_secrets": "regcred"}, "image_pull_secrets"),
    ({"image_pull_secrets": ["Bad Name"]}, "image_pull_secrets[0]"),
    ({"assets": "assets-folder"}, "assets"),
    ({"assets": "s3://emoflow/assets", "env": {"EMOFLOW_ASSETS_URI": "s3://x/y"}}, "EMOFLOW_ASSETS_URI"),
    ({"assets": "s3://emoflow/assets", "s3_secret": "Bad_Secret"}, "s3_secret"),
])
def test_bad_pull_secrets_and_assets_are_named(kwargs, needle):
    with pytest.raises(ValueError) as err:
        d.build_inference_service("emo", "ml", URI, **kwargs)
    assert needle in str(err.value)


def test_current_namespace_reads_the_pod_namespace(tmp_path):
    f = tmp_path / "namespace"
    f.write_text("team-a\n")
    assert d.current_namespace(f) == "team-a"
    with pytest.raises(d.DeployError, match="cannot be read.*pass the namespace"):
        d.current_namespace(tmp_path / "absent")
    f.write_text("Not A Namespace")
    with pytest.raises(ValueError, match="namespace in"):
        d.current_namespace(f)


# --------------------------------------------------------------------------- fake cluster


def _merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _isvc(uri: str = URI, **kwargs):
    kwargs.setdefault("image", IMAGE)
    return d.build_inference_service("emoflow", "ml", uri, **kwargs)


class FakeKube:
    """Enough of the Kubernetes API for InferenceServices, plus KServe's webhook and a scripted
    KServe controller. ``conflicts``: how many PUTs find the object changed by someone else first."""

    PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"
    FINALIZER = "inferenceservice.finalizers"
    MODE = "serving.kserve.io/deploymentMode"

    def __init__(self, mode: str = "ok", ready_after: int = 2, conflicts: int = 0):
        self.mode, self.ready_after, self.conflicts = mode, ready_after, conflicts
        self.objects: dict[tuple[str, str], dict] = {}
        self.log: list[tuple[str, str, str | None, dict | None]] = []
        self.reads_since_change: dict[tuple[str, str], int] = {}
        self.version = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    fake.log.append((self.command, self.path, self.headers.get("Content-Type"), body))
                    code, out = fake.route(self.command, self.path.split("?")[0], self.headers, body)
                self._send(code, out)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def status(code, reason, message):
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                      "message": message, "code": code}

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def write(self, key, new, old=None):
        """Store ``new`` like the API server: server-owned metadata, generation bump on spec change."""
        meta = new["metadata"]
        meta["resourceVersion"] = self.next_version()
        if old is None:
            meta.update(generation=1, uid="u-1")
            new["status"] = {}
        else:
            meta.update(generation=old["metadata"]["generation"], uid=old["metadata"]["uid"])
            if new.get("spec") != old.get("spec"):
                meta["generation"] += 1
                self.reads_since_change[key] = 0
        if old is None:
            self.reads_since_change[key] = 0
        self.objects[key] = new
        return new

    def route(self, method, path, headers, body):
        if not path.startswith(self.PREFIX):
            return self.status(404, "NotFound", f"no route {path}")
        parts = path[len(self.PREFIX):].split("/")
        ns = parts[0]
        if len(parts) == 2 and method == "POST":
            key = (ns, body["metadata"]["name"])
            if self.mode == "forbidden":
                return self.status(403, "Forbidden", "inferenceservices is forbidden: no create")
            if key in self.objects:
                return self.status(409, "AlreadyExists", "already exists")
            obj = copy.deepcopy(body)
            # KServe's webhook: the controller's finalizer and the cluster's default deployment mode
            obj["metadata"]["finalizers"] = [self.FINALIZER]
            obj["metadata"].setdefault("annotations", {})[self.MODE] = "Standard"
            return 201, self.write(key, obj)
        if len(parts) != 3:
            return self.status(404, "NotFound", path)
        key = (ns, parts[2])
        if key not in self.objects:
            return self.status(404, "NotFound", f'inferenceservices.serving.kserve.io "{parts[2]}" not found')
        obj = self.objects[key]
        if method == "PUT":
            if self.conflicts > 0:  # someone else wrote the object just before this PUT
                self.conflicts -= 1
                obj["metadata"]["resourceVersion"] = self.next_version()
            if body["metadata"].get("resourceVersion") != obj["metadata"]["resourceVersion"]:
                return self.status(409, "Conflict", "Operation cannot be fulfilled on inferenceservices."
                                   "serving.kserve.io \"emoflow\": the object has been modified")
            mode = (body["metadata"].get("annotations") or {}).get(self.MODE)
            if mode != obj["status"].get("deploymentMode", mode):  # KServe's validateDeploymentMode
                return self.status(400, "BadRequest", "update rejected: deploymentMode cannot be changed")
            new = copy.deepcopy(body)
            new["status"] = obj["status"]  # status is a subresource: a PUT does not change it
            return 200, self.write(key, new, obj)
        if method == "PATCH":
            if headers.get("Content-Type") != "application/merge-patch+json":
                return self.status(415, "UnsupportedMediaType", headers.get("Content-Type"))
            new = _merge_patch(obj, body)
            return 200, self.write(key, new, obj)
        if method == "GET":
            self.reads_since_change[key] += 1
            self.play_controller(key)
            return 200, self.objects[key]
        return self.status(405, "MethodNotAllowed", method)

    def play_controller(self, key):
        obj = self.objects[key]
        gen = obj["metadata"]["generation"]
        status = obj.setdefault("status", {})
        status["deploymentMode"] = obj["metadata"].get("annotations", {}).get(self.MODE, "Serverless")
        if self.mode == "never":
            status.update(observedGeneration=gen, conditions=[
                {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing",
                 "message": "Revision emoflow-predictor-00001 failed: ImagePullBackOff"},
                {"type": "Ready", "status": "False", "reason": "RevisionMissing",
                 "message": "Configuration emoflow-predictor does not have any ready Revision."},
            ])
        elif self.mode == "failed_load":
            status.update(observedGeneration=gen, conditions=[{"type": "Ready", "status": "False"}],
                          modelStatus={"transitionStatus": "BlockedByFailedLoad",
                                       "lastFailureInfo": {"reason": "ModelLoadFailed",
                                                           "message": "no weights.safetensors in /mnt/models"}})
        elif self.reads_since_change[key] >= self.ready_after:
            ns, name = key
            status.update(
                observedGeneration=gen, url=f"http://{name}.{ns}.example.com",
                conditions=[{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
                components={"predictor": {
                    "latestReadyRevision": f"{name}-predictor-{gen:05d}",
                    **({"previousRolledoutRevision": f"{name}-predictor-{gen - 1:05d}"} if gen > 1 else {}),
                }},
            )

    def client(self):
        from kserve import KServeClient

        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
        }
        return KServeClient(config_dict=cfg, persist_config=False)

    def methods(self):
        return [m for m, *_ in self.log]

    def bodies(self, method):
        return [body for m, _, _, body in self.log if m == method]


@pytest.fixture
def fake_kube():
    servers = []

    def start(**kwargs):
        fk = FakeKube(**kwargs)
        servers.append(fk)
        return fk

    yield start
    for fk in servers:
        fk.close()


def test_deploy_creates_then_waits_for_ready(fake_kube):
    fk = fake_kube(ready_after=3)
    isvc = _isvc(canary_traffic_percent=None)
    out = d.deploy_to_cluster(isvc, client=fk.client(), timeout_s=10, poll_s=0.01)
    assert out["status"]["url"] == "http://emoflow.ml.example.com"
    assert fk.methods()[:2] == ["GET", "POST"]  # 404, then create
    assert fk.methods().count("GET") == 1 + 3  # existence check + three polls to Ready
    stored = fk.objects[("ml", "emoflow")]
    assert stored["spec"] == d.to_manifest(isvc)["spec"]


def test_redeploy_leaves_exactly_the_desired_spec(fake_kube):
    """gpu → cpu: no GPU limit, node selector, toleration, canary or foreign container survives."""
    fk = fake_kube(ready_after=1)
    client = fk.client()
    first = _isvc(canary_traffic_percent=20, image_pull_secrets=["regcred"], assets="s3://emoflow/assets",
                  node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"})
    d.deploy_to_cluster(first, client=client, timeout_s=10, poll_s=0.01)
    live = fk.objects[("ml", "emoflow")]
    assert live["spec"]["predictor"]["nodeSelector"] and live["spec"]["predictor"]["tolerations"]
    # someone edits the live object: a second container, an extra env var (kubectl edit)
    live["spec"]["predictor"]["containers"].append({"name": "debug", "image": "busybox:1.36"})
    live["spec"]["predictor"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    live["metadata"]["resourceVersion"] = fk.next_version()
    version_before = live["metadata"]["resourceVersion"]

    fk.ready_after = 4  # the new revision takes longer; Ready=True of generation 1 is stale
    desired = _isvc("s3://emoflow/registry/emoflow-a1/v4", gpu=0, image=CPU_IMAGE)
    out = d.deploy_to_cluster(desired, client=client, timeout_s=10, poll_s=0.01)

    assert "PATCH" not in fk.methods()
    puts = fk.bodies("PUT")
    assert len(puts) == 1 and puts[0]["metadata"]["resourceVersion"] == version_before
    stored = fk.objects[("ml", "emoflow")]
    assert stored["spec"] == d.to_manifest(desired)["spec"]
    pred = stored["spec"]["predictor"]
    assert [c["name"] for c in pred["containers"]] == ["kserve-container"]
    assert pred["containers"] == d.to_manifest(desired)["spec"]["predictor"]["containers"]
    assert not {"nodeSelector", "tolerations", "canaryTrafficPercent", "imagePullSecrets"} & set(pred)
    assert "nvidia.com/gpu" not in json.dumps(stored["spec"])
    assert _env(pred["containers"][0]) == {"STORAGE_URI": "s3://emoflow/registry/emoflow-a1/v4/"}
    # what the cluster owns is kept: KServe's finalizer and the recorded deployment mode
    assert stored["metadata"]["finalizers"] == [FakeKube.FINALIZER]
    assert stored["metadata"]["annotations"] == {FakeKube.MODE: "Standard"}
    assert stored["metadata"]["labels"] == d.LABELS
    assert out["metadata"]["generation"] == 2 and out["status"]["observedGeneration"] == 2


def test_replace_retries_on_conflict(fake_kube):
    fk = fake_kube(ready_after=1)
    client = fk.client()
    d.deploy_to_cluster(_isvc(), client=client, timeout_s=10, poll_s=0.01)
    fk.conflicts = 2  # the controller writes the object twice while we replace it
    desired = _isvc(gpu=0, image=CPU_IMAGE)
    d.deploy_to_cluster(desired, client=client, timeout_s=10, poll_s=0.01)
    assert len(fk.bodies("PUT")) == 3
    assert fk.objects[("ml", "emoflow")]["spec"] == d.to_manifest(desired)["spec"]


def test_replace_gives_up_after_repeated_conflicts(fake_kube):
    fk = fake_kube(ready_after=1)
    client = fk.client()
    d.deploy_to_cluster(_isvc(), client=client, timeout_s=10, poll_s=0.01)
    fk.conflicts = 1000
    with pytest.raises(d.DeployError) as err:
        d.deploy_to_cluster(_isvc(gpu=0, image=CPU_IMAGE), client=client, timeout_s=10, poll_s=0.01)
    assert f"attempt {d.REPLACE_ATTEMPTS}" in str(err.value) and "409" in str(err.value)
    assert len(fk.bodies("PUT")) == d.REPLACE_ATTEMPTS


def test_placeholder_image_is_refused_before_any_call(fake_kube):
    fk = fake_kube()
    with pytest.raises(d.DeployError) as err:
        d.deploy_to_cluster(d.build_inference_service("emoflow", "ml", URI), client=fk.client(), timeout_s=1)
    assert "ghcr.io/your-org" in str(err.value) and images.REGISTRY_ENV in str(err.value)
    assert fk.log == []


def test_deploy_times_out_with_last_conditions(fake_kube):
    fk = fake_kube(mode="never")
    started = time.monotonic()
    with pytest.raises(d.DeployError) as err:
        d.deploy_to_cluster(_isvc(), client=fk.client(), timeout_s=0.4, poll_s=0.05)
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 5
    msg = str(err.value)
    assert "ml/emoflow not Ready after 0.4 s" in msg
    assert "Ready=False (RevisionMissing: Configuration emoflow-predictor does not have any ready Revision.)" in msg
    assert "ImagePullBackOff" in msg


def test_deploy_fails_fast_on_failed_model_load(fake_kube):
    fk = fake_kube(mode="failed_load")
    started = time.monotonic()
    with pytest.raises(d.DeployError) as err:
        d.deploy_to_cluster(_isvc(), client=fk.client(), timeout_s=30, poll_s=0.01)
    assert time.monotonic() - started < 5
    assert "BlockedByFailedLoad" in str(err.value)
    assert "no weights.safetensors in /mnt/models" in str(err.value)


def test_deploy_reports_api_errors(fake_kube):
    fk = fake_kube(mode="forbidden")
    with pytest.raises(d.DeployError) as err:
        d.deploy_to_cluster(_isvc(), client=fk.client(), timeout_s=1, poll_s=0.01)
    assert "could not create InferenceService ml/emoflow" in str(err.value)
    assert "403" in str(err.value)


def test_promote_and_rollback_canary(fake_kube):
    fk = fake_kube(ready_after=1)
    client = fk.client()
    with pytest.raises(d.DeployError, match="does not exist"):
        d.promote_canary("emoflow", "ml", client=client)
    d.deploy_to_cluster(_isvc(), client=client, timeout_s=10, poll_s=0.01)
    with pytest.raises(d.DeployError, match="no previous rolled-out revision"):
        d.rollback_canary("emoflow", "ml", client=client, timeout_s=5, poll_s=0.01)
    d.deploy_to_cluster(_isvc("s3://emoflow/registry/emoflow-a1/v4", canary_traffic_percent=10),
                        client=client, timeout_s=10, poll_s=0.01)
    assert fk.objects[("ml", "emoflow")]["spec"]["predictor"]["canaryTrafficPercent"] == 10

    out = d.rollback_canary("emoflow", "ml", client=client, timeout_s=5, poll_s=0.01)
    assert out["spec"]["predictor"]["canaryTrafficPercent"] == 0
    last_patch = fk.bodies("PATCH")[-1]
    assert last_patch == {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                          "metadata": {"name": "emoflow", "namespace": "ml"},
                          "spec": {"predictor": {"canaryTrafficPercent": 0}}}
    # the rest of the spec is untouched by the merge patch
    assert _env(out["spec"]["predictor"]["containers"][0])["STORAGE_URI"].endswith("/v4/")

    out = d.promote_canary("emoflow", "ml", client=client, timeout_s=5, poll_s=0.01)
    assert out["spec"]["predictor"]["canaryTrafficPercent"] == 100
    assert out["status"]["observedGeneration"] == out["metadata"]["generation"]


def test_wait_ready_rejects_a_stale_ready_condition():
    """Ready=True from an older generation must not end the wait (no cluster, scripted reads)."""
    reads = iter([
        {"status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}},
        {"status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}},
        {"status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "Unknown"}]}},
        {"status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}, "n": 4},
    ])

    class Scripted:
        def get(self, name, namespace=None):
            return next(reads)

    out = d.wait_ready(Scripted(), "emoflow", "ml", generation=2, timeout_s=5, poll_s=0, sleep=lambda s: None)
    assert out["n"] == 4


# --------------------------------------------------------------------------- the pipeline's deploy step


@pytest.fixture
def step_cluster(fake_kube, monkeypatch, tmp_path):
    """steps.deploy against the fake API (its KServeClient) from a pod in namespace team-a."""
    fk = fake_kube(ready_after=1)
    monkeypatch.setattr(d, "KServeClient", fk.client)
    ns_file = tmp_path / "namespace"
    ns_file.write_text("team-a\n")
    monkeypatch.setattr(d, "POD_NAMESPACE_FILE", str(ns_file))
    return fk


def _step(**kwargs):
    from emoflow import steps

    args = {"target": "kserve", "namespace": "", "storage_uri": "s3://emoflow/registry/emoflow-a1/v1",
            "gpu": "1", "image": IMAGE, "timeout_s": 30}
    args.update(kwargs)
    return steps.deploy("emoflow-a1@1", "", **args)


def test_step_deploys_with_the_compiled_image_into_the_pod_namespace(step_cluster, monkeypatch):
    # the pod's environment names another registry: the compiled serving_image still wins
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.elsewhere.org/wrong")
    url = _step(image_pull_secrets=["regcred"], assets="s3://emoflow/assets")
    assert url == "http://emoflow.team-a.example.com"
    stored = step_cluster.objects[("team-a", "emoflow")]
    pred = stored["spec"]["predictor"]
    c = pred["containers"][0]
    assert c["image"] == IMAGE
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _env(c) == {"STORAGE_URI": "s3://emoflow/registry/emoflow-a1/v1/", "EMOFLOW_ASSETS_URI": "s3://emoflow/assets"}
    assert c["envFrom"] == [{"secretRef": {"name": "emoflow-s3", "optional": False}}]
    assert pred["imagePullSecrets"] == [{"name": "regcred"}]
    assert d.unknown_fields(stored) == []


@pytest.mark.parametrize("gpu, limit", [("0", None), (0, None), ("1", "1"), (2, "2"), (" 1 ", "1")])
def test_step_gpu_may_be_a_string(step_cluster, gpu, limit):
    _step(gpu=gpu, image=CPU_IMAGE)
    c = step_cluster.objects[("team-a", "emoflow")]["spec"]["predictor"]["containers"][0]
    assert (c["resources"].get("limits") or {}).get("nvidia.com/gpu") == limit


def test_step_bad_gpu_is_named(step_cluster):
    with pytest.raises(ValueError, match="gpu must be a whole number.*'one'"):
        _step(gpu="one")
    assert step_cluster.log == []


def test_step_empty_image_uses_this_process_settings_or_refuses_the_placeholder(step_cluster, monkeypatch):
    with pytest.raises(d.DeployError, match="placeholder registry"):
        _step(image="", gpu="0")
    assert step_cluster.log == []
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.org/ml")
    _step(image="", gpu="0")
    c = step_cluster.objects[("team-a", "emoflow")]["spec"]["predictor"]["containers"][0]
    assert c["image"] == images.image("serve") == f"registry.example.org/ml/emoflow-serve:{images.tag()}"


def test_step_explicit_namespace_and_missing_namespace_file(step_cluster, monkeypatch, tmp_path):
    _step(namespace="serving")
    assert ("serving", "emoflow") in step_cluster.objects
    monkeypatch.setattr(d, "POD_NAMESPACE_FILE", str(tmp_path / "absent"))
    with pytest.raises(d.DeployError, match="absent cannot be read"):
        _step()


def test_step_honours_timeout_s(step_cluster):
    step_cluster.mode = "never"
    with pytest.raises(d.DeployError, match=r"team-a/emoflow not Ready after 0 s"):
        _step(timeout_s=0)
