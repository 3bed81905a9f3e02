"""Alertmanager webhook receiver that starts one retraining run per drift episode.

    emoflow retrain-webhook --pipeline pipeline.yaml --config run.yaml \
        --token-file /var/run/secrets/emoflow/webhook-token [--bind 127.0.0.1 --port 9095] \
        [--host http://ml-pipeline.kubeflow:8888] [--kfp-token-file /var/run/secrets/kubeflow/pipelines/token] \
        [--namespace <profile namespace>] [--service-account <run's ServiceAccount>]

In a container (the Deployment), listen on every interface: ``--bind 0.0.0.0``. The run's
parameters (--config run.yaml / --param) are required and must name corpus and source: a
retraining never uses the pipeline's defaults (see emoflow.monitoring.schedule.retrain_params).
KFP authentication in the cluster: multi-user KFP accepts the projected ServiceAccount token
(audience ``pipelines.kubeflow.org``) mounted at /var/run/secrets/kubeflow/pipelines/token, which
kfp.Client reads on its own when no --host is given; with --host, pass --kfp-token-file.

Alertmanager side (receiver config)::

    receivers:
      - name: emoflow-retrain
        webhook_configs:
          - url: http://emoflow-retrain-webhook:9095/alerts
            send_resolved: true
            http_config:
              authorization: {type: Bearer, credentials_file: /etc/alertmanager/secrets/emoflow-webhook-token}

Protocol:
- POST /alerts (or /) with an Alertmanager webhook payload (version "4"). The caller must send
  `Authorization: Bearer <token>`; the token comes from --token-file or $EMOFLOW_WEBHOOK_TOKEN
  (≥ 16 characters), never from code, and is compared in constant time. Missing/wrong token → 401,
  not JSON → 415, too large → 413, malformed payload → 400 naming the bad field; GET /healthz → 200.
- An alert is identified by its fingerprint (or a hash of its labels) plus startsAt. Alerts whose
  alertname is in `alertnames` (default EmotionDistributionDrift) belong to the episode of their
  `model` label (the groupKey when there is no model label). A firing alert opens an episode when
  none is open for that model and submits ONE training run, unless a run was submitted for that
  model less than `cooldown_s` ago. Repeats of the same alert (Alertmanager's repeat_interval),
  other alerts joining an open episode, and late duplicates after resolution start nothing.
  When every alert of the episode is resolved the episode ends; a later firing (new startsAt)
  opens a new episode (subject to the cool-down).
- If submitting fails the answer is 503 and nothing is recorded, so Alertmanager retries.
- Other alert names are acknowledged (200) and listed as ignored.

The submit function is injected: `submit(model: str, alert: dict) -> run_id`; `kfp_submitter`
builds one around kfp.Client.create_run_from_pipeline_package.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from emoflow.monitoring.schedule import retrain_params

TOKEN_ENV = "EMOFLOW_WEBHOOK_TOKEN"
MIN_TOKEN_LENGTH = 16
MAX_BODY_BYTES = 1 << 20
MAX_ALERTS = 1000
DEFAULT_ALERTNAMES = ("EmotionDistributionDrift",)
DEFAULT_COOLDOWN_S = 6 * 3600.0
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

SubmitFn = Callable[[str, dict], str]


class PayloadError(ValueError):
    """The request body is not a valid Alertmanager v4 webhook payload."""


class SubmitError(RuntimeError):
    """The training run could not be submitted (answered 503 so Alertmanager retries)."""


def load_token(token_file: str | os.PathLike | None = None, env: str = TOKEN_ENV) -> str:
    """The shared webhook token from `token_file` (if given) or the environment variable `env`."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read webhook token file {token_file}: {exc}") from None
        source = f"token file {token_file}"
    else:
        token = os.environ.get(env, "").strip()
        source = f"${env}"
    if not token:
        raise ValueError(f"no webhook token: set ${env} or pass --token-file")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"webhook token from {source} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PayloadError(f"{where} must be an object of string values")
    return value


def parse_payload(payload: Any) -> dict:
    """Validate an Alertmanager webhook payload (version 4); return it. Raises PayloadError."""
    if not isinstance(payload, dict):
        raise PayloadError("payload must be a JSON object")
    if payload.get("version") != "4":
        raise PayloadError(f"payload version must be \"4\" (Alertmanager webhook), got {payload.get('version')!r}")
    if payload.get("status") not in ("firing", "resolved"):
        raise PayloadError(f"payload status must be firing or resolved, got {payload.get('status')!r}")
    if not isinstance(payload.get("groupKey"), str) or not payload["groupKey"]:
        raise PayloadError("payload groupKey must be a non-empty string")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise PayloadError("payload alerts must be a non-empty list")
    if len(alerts) > MAX_ALERTS:
        raise PayloadError(f"payload has {len(alerts)} alerts, more than {MAX_ALERTS}")
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise PayloadError(f"{where} must be an object")
        if alert.get("status") not in ("firing", "resolved"):
            raise PayloadError(f"{where}.status must be firing or resolved, got {alert.get('status')!r}")
        labels = _str_map(alert.get("labels"), f"{where}.labels")
        if not labels.get("alertname"):
            raise PayloadError(f"{where}.labels.alertname is missing")
        if "annotations" in alert:
            _str_map(alert["annotations"], f"{where}.annotations")
        starts = alert.get("startsAt")
        if not isinstance(starts, str) or not _TIME.match(starts):
            raise PayloadError(f"{where}.startsAt must be an RFC 3339 time, got {starts!r}")
        fp = alert.get("fingerprint")
        if fp is not None and (not isinstance(fp, str) or not fp):
            raise PayloadError(f"{where}.fingerprint must be a non-empty string")
    return payload


def alert_key(alert: dict) -> str:
    """Identity of one alert occurrence: fingerprint (or hash of the labels) + startsAt."""
    fp = alert.get("fingerprint") or hashlib.sha256(
        json.dumps(alert["labels"], sort_keys=True).encode()).hexdigest()[:16]
    return f"{fp}@{alert['startsAt']}"


class RetrainTrigger:
    """Episode bookkeeping: decides which alerts start a training run (thread-safe)."""

    def __init__(
        self,
        submit: SubmitFn,
        *,
        alertnames: tuple[str, ...] | list[str] = DEFAULT_ALERTNAMES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.time,
        state_path: str | os.PathLike | None = None,
        retention_s: float = 7 * 86400.0,
    ) -> None:
        if cooldown_s < 0:
            raise ValueError(f"cooldown must be >= 0 seconds, got {cooldown_s}")
        if not alertnames:
            raise ValueError("at least one alert name must trigger retraining")
        self.submit = submit
        self.alertnames = frozenset(alertnames)
        self.cooldown_s = float(cooldown_s)
        self.clock = clock
        self.retention_s = max(float(retention_s), self.cooldown_s)
        self.state_path = Path(state_path) if state_path else None
        self._lock = threading.Lock()
        self.active: dict[str, list[str]] = {}      # model -> keys of its firing alerts
        self.seen: dict[str, float] = {}             # alert key -> first seen (time)
        self.last_run: dict[str, list] = {}          # model -> [time, run_id]
        self.runs: list[dict] = []                   # submitted runs, newest last
        if self.state_path and self.state_path.exists():
            self._load()

    def handle(self, payload: dict) -> dict:
        """Process a validated payload; return what happened to each alert."""
        parse_payload(payload)
        result: dict[str, list] = {"submitted": [], "duplicate": [], "joined": [], "cooldown": [],
                                   "resolved": [], "ignored": []}
        with self._lock:
            now = self.clock()
            self._prune(now)
            for alert in payload["alerts"]:
                name = alert["labels"]["alertname"]
                key = alert_key(alert)
                if name not in self.alertnames:
                    result["ignored"].append(name)
                    continue
                model = alert["labels"].get("model") or payload["groupKey"]
                keys = self.active.setdefault(model, [])
                if alert["status"] == "resolved":
                    if key in keys:
                        keys.remove(key)
                    self.seen.setdefault(key, now)  # a late "firing" copy must not reopen it
                    result["resolved"].append({"model": model, "alert": key, "episode_open": bool(keys)})
                    continue
                if key in self.seen:
                    result["duplicate"].append({"model": model, "alert": key})
                    continue
                if keys:
                    self.seen[key] = now
                    keys.append(key)
                    result["joined"].append({"model": model, "alert": key})
                    continue
                last = self.last_run.get(model)
                if last is not None and now - last[0] < self.cooldown_s:
                    self.seen[key] = now
                    keys.append(key)
                    result["cooldown"].append({"model": model, "alert": key, "last_run": last[1],
                                               "retry_after_s": round(self.cooldown_s - (now - last[0]), 1)})
                    continue
                try:
                    run_id = self.submit(model, alert)
                except Exception as exc:  # KFP unreachable etc.: let Alertmanager retry
                    self._save()
                    raise SubmitError(f"submitting the training run for {model} failed: {exc}") from exc
                self.seen[key] = now
                keys.append(key)
                self.last_run[model] = [now, run_id]
                run = {"model": model, "alert": key, "alertname": name, "run_id": run_id, "time": now}
                self.runs.append(run)
                result["submitted"].append(run)
            self._save()
        return result

    def _prune(self, now: float) -> None:
        live = {k for keys in self.active.values() for k in keys}
        for key, t in list(self.seen.items()):
            if now - t > self.retention_s and key not in live:
                del self.seen[key]
        self.runs = self.runs[-1000:]

    def _save(self) -> None:
        if not self.state_path:
            return
        state = {"active": self.active, "seen": self.seen, "last_run": self.last_run, "runs": self.runs}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            self.active = {k: list(v) for k, v in state["active"].items()}
            self.seen = {k: float(v) for k, v in state["seen"].items()}
            self.last_run = {k: list(v) for k, v in state["last_run"].items()}
            self.runs = list(state.get("runs", []))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"webhook state file {self.state_path} is unreadable: {exc}") from None


def create_app(trigger: RetrainTrigger, token: str) -> Starlette:
    """The Starlette app: POST /alerts (and /) with Bearer auth, GET /healthz."""
    if not token or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"webhook token must be at least {MIN_TOKEN_LENGTH} characters")
    expected = token.encode()

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    async def alerts(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), expected):
            return error(401, "invalid token", **{"WWW-Authenticate": "Bearer"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return error(415, f"content type must be application/json, got {ctype or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error(400, f"body is not valid JSON: {exc}")
        try:
            parse_payload(payload)
            result = await run_in_threadpool(trigger.handle, payload)
        except PayloadError as exc:
            return error(400, str(exc))
        except SubmitError as exc:
            return error(503, str(exc))
        return JSONResponse(result)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/alerts", alerts, methods=["POST"]),
        Route("/", alerts, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


def kfp_submitter(client, pipeline_package_path: str | os.PathLike, *, experiment: str = "emoflow",
                  params: dict | None = None, namespace: str | None = None,
                  service_account: str | None = None, run_name_prefix: str = "emoflow-retrain") -> SubmitFn:
    """A submit function creating one run of the compiled pipeline through `client` (kfp.Client).

    params: the run's parameters (corpus and source required: ValueError before anything starts).
    namespace: KFP profile namespace of the run; service_account: the run pods' ServiceAccount."""
    path = Path(pipeline_package_path)
    if not path.is_file():
        raise ValueError(f"pipeline package {path} does not exist (compile it with `emoflow compile`)")
    base = retrain_params(params)

    def submit(model: str, alert: dict) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        safe = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:40] or "model"
        result = client.create_run_from_pipeline_package(
            str(path), arguments=dict(base), run_name=f"{run_name_prefix}-{safe}-{stamp}",
            experiment_name=experiment, namespace=namespace, service_account=service_account)
        return str(result.run_id)

    return submit


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 9095) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
