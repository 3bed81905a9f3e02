"""KServe's ModelServer with two changes a real deployment needs.

- The bind address is a parameter (KServe hard-codes 0.0.0.0; tests and workstations use 127.0.0.1).
- The model loads in the background after the server starts, and ``/v2/health/ready`` answers 503
  until it is loaded (KServe's own server-ready check always answers ready); requests that arrive
  before then get 503 instead of triggering a second load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading

from kserve import ModelServer
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer

log = logging.getLogger("emoflow.serving")


class ReadinessDataPlane(DataPlane):
    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        return bool(models) and all(m.ready for m in models.values())

    async def get_model(self, name: str):
        model = self.get_model_from_registry(name)
        if not model.ready:
            raise ModelNotReady(name)
        return model


class LoadFailed(RuntimeError):
    pass


class EmoflowModelServer(ModelServer):
    def __init__(self, *, host: str = "127.0.0.1", http_port: int = 8080, **kwargs):
        kwargs.setdefault("enable_grpc", False)
        super().__init__(http_port=http_port, **kwargs)
        self.host = host
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
        self._rest_server = RESTServer(
            "kserve.model_server:app", self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
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

    def stop_serving(self) -> None:
        """Ask the HTTP server to exit (it finishes requests in flight)."""
        if self._rest_server is not None:
            self._rest_server._server.should_exit = True


def serve(model, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    EmoflowModelServer(host=host, http_port=port).start([model])
