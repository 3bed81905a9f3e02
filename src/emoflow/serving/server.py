"""KServe's ModelServer with two changes a real deployment needs.

- The bind address is a parameter (KServe hard-codes 0.0.0.0; tests and workstations use 127.0.0.1).
- The model loads in the background after the server starts, and ``/v2/health/ready`` answers 503
  until it is loaded (KServe's own server-ready check always answers ready); requests that arrive
  before then get 503 instead of triggering a second load.
- Request bodies over the model's ``config.max_body_bytes`` get 413 before they are read whole.
- SIGTERM/SIGINT stop the HTTP server (KServe's handler only stops its multi-process server).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading

from kserve import ModelServer
from kserve.errors import InvalidInput, ModelNotReady

from emoflow.serving.oip import OIPDataPlane, OIPRESTServer

log = logging.getLogger("emoflow.serving")


class ReadinessDataPlane(OIPDataPlane):
    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        return bool(models) and all(m.ready for m in models.values())

    def decode(self, *args, **kwargs):
        """KServe's decoder raises ValueError/struct.error on malformed bodies (e.g. a v2 binary
        request whose header length lies); those are client errors, so answer 400."""
        try:
            return super().decode(*args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"could not decode the request body ({type(exc).__name__}: {exc})") from None

    async def get_model(self, name: str):
        model = self.get_model_from_registry(name)
        if not model.ready:
            raise ModelNotReady(name)
        return model


class LoadFailed(RuntimeError):
    pass


class BodyLimitMiddleware:
    """ASGI middleware: 413 for request bodies over `limit` bytes (declared or streamed)."""

    def __init__(self, app, limit: int, hint: str = ""):
        self.app = app
        self.limit = limit
        self.hint = hint

    async def _reject(self, send, size: int | None) -> None:
        got = f"{size} bytes" if size is not None else f"more than {self.limit} bytes"
        body = json.dumps({"error": f"request body is {got}, the limit is {self.limit} bytes{self.hint}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.limit <= 0:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = None
            if size is not None and size > self.limit:
                return await self._reject(send, size)
            if size is not None:
                return await self.app(scope, receive, send)
        # no (or unreadable) length: read the stream up to the limit, then replay it
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.limit:
                return await self._reject(send, None)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replay_receive, send)


class LimitedRESTServer(OIPRESTServer):
    def __init__(self, *args, body_limit: int = 0, body_hint: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.body_limit = body_limit
        self.body_hint = body_hint

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        if self.body_limit > 0:
            app.add_middleware(BodyLimitMiddleware, limit=self.body_limit, hint=self.body_hint)


class EmoflowModelServer(ModelServer):
    def __init__(self, *, host: str = "127.0.0.1", http_port: int = 8080, log_requests: bool = True, **kwargs):
        kwargs.setdefault("enable_grpc", False)
        super().__init__(http_port=http_port, **kwargs)  # configures logging
        self.host = host
        if not log_requests:  # per-request access/timing lines: off for throughput
            for name in ("kserve.trace", "uvicorn.access"):
                logging.getLogger(name).setLevel(logging.WARNING)
        self.dataplane = ReadinessDataPlane(model_registry=self.registered_models)
        self.load_error: BaseException | None = None

    def _load_in_background(self, model) -> None:
        def run() -> None:
            try:
                model.load()
            except BaseException as exc:  # surfaced in logs; readiness stays false
                self.load_error = exc
                log.exception("model %s failed to load", model.name)

        threading.Thread(target=run, name=f"load-{model.name}", daemon=True).start()

    def start(self, models) -> None:
        for model in models:
            self.register_model(model)
            model.enable_latency_logging = self.enable_latency_logging
            if not model.ready:
                self._load_in_background(model)
        configs = [getattr(m, "config", None) for m in models]
        limits = [c.max_body_bytes for c in configs if c is not None and hasattr(c, "max_body_bytes")]
        hint = "".join(f" (max_request_bytes={c.max_request_bytes} of audio, base64 in JSON)"
                       for c in configs[:1] if c is not None and hasattr(c, "max_request_bytes"))
        self._rest_server = LimitedRESTServer(
            "kserve.model_server:app", self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
            body_limit=max(limits, default=0), body_hint=hint,
        )
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        # KServe configures the loop of get_event_loop() and then runs asyncio.run() on a new one;
        # configure and run one loop so the executor size and exception handler apply.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._custom_exception_handler or self.default_exception_handler)
        workers = self.max_asyncio_workers or min(32, (os.cpu_count() or 1) + 4)
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=workers))
        if threading.current_thread() is threading.main_thread():
            self.register_signal_handler()
        log.info("serving %s on http://%s:%d", ", ".join(m.name for m in models), self.host, self.http_port)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    def stop(self, sig: int) -> None:
        """Signal handler: finish requests in flight, then exit."""
        log.info("signal %s: stopping", sig)
        self.stop_serving()

    def stop_serving(self) -> None:
        """Ask the HTTP server to exit (it finishes requests in flight)."""
        if self._rest_server is not None:
            self._rest_server._server.should_exit = True


def serve(model, *, host: str = "127.0.0.1", port: int = 8080, log_requests: bool = True) -> None:
    """Serve `model` on host:port until SIGTERM/SIGINT."""
    EmoflowModelServer(host=host, http_port=port, log_requests=log_requests).start([model])
