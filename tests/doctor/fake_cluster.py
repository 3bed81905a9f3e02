"""A fake Kubernetes API server on 127.0.0.1 that answers with recorded responses (recorded/*.json).

The real ``kubernetes`` client talks to it through a generated kubeconfig, so its own request
building and response parsing run. ``FakeCluster.routes`` maps ``(method, path)`` to ``(status,
body)``; a path with no route gets the API server's 404 Status. Access reviews are decided by
``FakeCluster.allow(user, attrs)``; ``impersonation_forbidden`` makes the impersonated
SelfSubjectAccessReview answer 403 as the API server does. Every request is kept in ``requests``.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote
from typing import Any, Callable

import yaml

RECORDED = Path(__file__).resolve().parent / "recorded"
TOKEN = "doctor-test-token"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "example-access-key", "AWS_SECRET_ACCESS_KEY": "example-secret-key"}


def recorded(name: str) -> Any:
    return json.loads((RECORDED / name).read_text())


def not_found(kind: str, name: str, group: str = "") -> dict:
    """The metav1 Status for a missing object (shape of recorded/status-404-crd.json)."""
    body = recorded("status-404-crd.json")
    resource = f"{kind}.{group}" if group else kind
    body["message"] = f'{resource} "{name}" not found'
    body["details"] = {"name": name, "group": group, "kind": kind} if group else {"name": name, "kind": kind}
    return body


class FakeCluster:
    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[dict] = []
        self.allow: Callable[[str, dict], bool] = lambda user, attrs: True
        self.impersonation_forbidden = False
        self.subject_access_review_forbidden = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ---- set-up
    def get(self, path: str, body: Any, status: int = 200) -> None:
        self.routes[("GET", path)] = (status, body)

    def healthy(self, namespace: str = "kubeflow", runner: str = "pipeline-runner") -> "FakeCluster":
        """A cluster where every check passes (KFP standalone, or multi-user when ``namespace`` is a
        profile's; KServe in Serverless mode)."""
        healthz = recorded("kfp-healthz.json")
        healthz["multi_user"] = namespace != "kubeflow"
        self.get("/api/v1/namespaces/kubeflow/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz", healthz)
        for plural in ("inferenceservices.serving.kserve.io", "podmonitors.monitoring.coreos.com",
                       "prometheusrules.monitoring.coreos.com"):
            self.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}",
                     recorded(f"crd-{plural.split('.')[0]}.json"))
        self.get("/api/v1/namespaces/kserve/configmaps/inferenceservice-config", recorded("inferenceservice-config.json"))
        features = recorded("config-features.json")
        features["data"].update({"kubernetes.podspec-nodeselector": "enabled", "kubernetes.podspec-tolerations": "enabled"})
        self.get("/api/v1/namespaces/knative-serving/configmaps/config-features", features)
        ns = recorded("namespace.json")
        ns["metadata"]["name"] = namespace
        self.get(f"/api/v1/namespaces/{namespace}", ns)
        for sa, name in (("pipeline-runner", runner), ("emoflow-s3", "emoflow-s3")):
            obj = recorded(f"serviceaccount-{sa}.json")
            obj["metadata"].update(namespace=namespace, name=name)
            self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}", obj)
        secret = recorded("secret-emoflow-s3.json")  # credentials are added here: no key literals in data files
        secret["metadata"]["namespace"] = namespace
        secret["data"].update({key: base64.b64encode(value.encode()).decode() for key, value in CREDENTIALS.items()})
        self.get(f"/api/v1/namespaces/{namespace}/secrets/emoflow-s3", secret)
        self.get("/api/v1/nodes", recorded("nodelist.json"))
        return self

    def body(self, method: str, path: str) -> Any:
        """The recorded body of a route, to change it in a test."""
        return self.routes[(method, path)][1]

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "alice", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "alice"}}],
        }))
        return path

    def __enter__(self) -> "FakeCluster":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # ---- serving
    def _review(self, kind: str, request: dict, headers: dict) -> tuple[int, Any]:
        if kind == "SelfSubjectAccessReview":
            user = headers.get("Impersonate-User")
            if user and self.impersonation_forbidden:
                _, _, ns, name = user.split(":")  # system:serviceaccount:<ns>:<name>
                body = recorded("status-403-impersonate.json")
                body["message"] = body["message"].replace('"pipeline-runner"', f'"{name}"').replace('"kubeflow"', f'"{ns}"')
                body["details"]["name"] = name
                return 403, body
            user = user or "alice@example.org"
        else:
            if self.subject_access_review_forbidden:
                body = recorded("status-403-impersonate.json")
                body["message"] = ('subjectaccessreviews.authorization.k8s.io is forbidden: User "alice@example.org" '
                                   'cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" '
                                   'at the cluster scope')
                body["details"] = {"group": "authorization.k8s.io", "kind": "subjectaccessreviews"}
                return 403, body
            user = request["spec"]["user"]
        attrs = request["spec"]["resourceAttributes"]
        answer = copy.deepcopy(recorded("ssar-allowed.json"))
        answer.update(kind=kind, spec=request["spec"])
        allowed = self.allow(user, attrs)
        answer["status"] = answer["status"] if allowed else {"allowed": False}
        return 201, answer

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any = None) -> dict:
                entry = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                fake.requests.append(entry)
                return entry

            def do_GET(self):  # noqa: N802
                self._record()
                # the API server routes on the decoded path (Go's URL.Path): the client sends the
                # service-proxy path with its slashes %2F-encoded
                path = unquote(self.path.split("?")[0])
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                            "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
                if ("GET", path) in fake.routes:
                    return self._send(*fake.routes[("GET", path)])
                parts = path.strip("/").split("/")
                return self._send(404, not_found(parts[-2] if len(parts) > 1 else "unknown", parts[-1]))

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                self._record(request)
                path = self.path.split("?")[0]
                kinds = {"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews": "SelfSubjectAccessReview",
                         "/apis/authorization.k8s.io/v1/subjectaccessreviews": "SubjectAccessReview"}
                if path in kinds:
                    return self._send(*fake._review(kinds[path], request, dict(self.headers)))
                return self._send(404, not_found("unknown", path))

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        return Handler
