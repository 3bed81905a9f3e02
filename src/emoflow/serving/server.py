"""KServe's ModelServer with the changes a real deployment needs.

- The bind address is a parameter (KServe hard-codes 0.0.0.0; tests and workstations use 127.0.0.1).
- The model loads in the background after the server starts, and ``/v2/health/ready`` answers 503
  until it is loaded (KServe's own server-ready check always answers ready); requests that arrive
  before then get 503 instead of triggering a second load.
- The HTTP edge (emoflow.serving.edge): every response counted by route and status class; bodies
  over the model's ``config.max_body_bytes`` get 413 before they are read whole, bodies that would
  not fit the memory budget 503 + Retry-After (emoflow.serving.admission), slow headers and bodies
  408; ``/v2/health/ready`` answers 503 while the budget has no room for a one-clip request.
- SIGTERM/SIGINT stop the HTTP server (KServe's handler only stops its multi-process server).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading

from kserve import ModelServer
from kserve.errors import InvalidInput, ModelNotReady
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from emoflow.serving.admission import MemoryBudget, Overloaded, budget_for
from emoflow.serving.edge import RequestGuard, ResponseMetrics, header_deadline_protocol
from emoflow.serving.oip import OIPDataPlane, OIPRESTServer, error_response
from emoflow.serving.settings import ServingConfig

log = logging.getLogger("emoflow.serving")


class ReadinessDataPlane(OIPDataPlane):
    budget: MemoryBudget | None = None

    async def ready(self) -> bool:
        """Every model loaded, and the memory budget has room for a one-clip request."""
        models = self.model_registry.get_models()
        loaded = bool(models) and all(m.ready for m in models.values())
        return loaded and not (self.budget is not None and self.budget.saturated())

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


class LimitedRESTServer(OIPRESTServer):
    """KServe's REST server behind the HTTP edge (emoflow.serving.edge): responses counted by route,
    body size/time/memory guarded, header deadline; 503 + Retry-After for Overloaded."""

    def __init__(self, *args, body_limit: int = 0, body_hint: str = "", budget: MemoryBudget | None = None,
                 settings: ServingConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.body_limit = body_limit
        self.body_hint = body_hint
        self.budget = budget
        self.settings = settings or ServingConfig()
        if self.settings.header_timeout_s > 0:
            self.config.http = header_deadline_protocol(AutoHTTPProtocol, self.settings.header_timeout_s)

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        # added last = outermost: the guard answers before KServe reads a byte, the metrics see everything
        app.add_middleware(RequestGuard, limit=self.body_limit, budget=self.budget,
                           body_timeout_s=self.settings.body_timeout_s, hint=self.body_hint)
        app.add_middleware(ResponseMetrics)

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(Overloaded, _overloaded)


async def _overloaded(request, exc: Overloaded):
    log.warning("%s %s: 503 %s", request.method, request.url.path, exc)
    return error_response(503, str(exc), {"Retry-After": str(exc.retry_after_s)})


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
        settings = next((m.config for m in models if isinstance(getattr(m, "config", None), ServingConfig)),
                        ServingConfig())
        # one memory budget for the process: the model's (its predict() reserves decoded audio in it)
        budget = next((m.budget for m in models if isinstance(getattr(m, "budget", None), MemoryBudget)), None)
        self.dataplane.budget = budget or budget_for(settings)
        hint = f" (max_request_bytes={settings.max_request_bytes} of audio, base64 in JSON)"
        self._rest_server = LimitedRESTServer(
            "kserve.model_server:app", self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
            body_limit=settings.max_body_bytes, body_hint=hint, budget=self.dataplane.budget, settings=settings,
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
