"""The KServe predictor: a ``kserve.Model`` that serves a registered emoflow model.

The jobs live in their own modules: ``settings`` (ServingConfig, the flags), ``protocol``
(requests of V1, v2 and text-only models), ``responses`` (answers), ``model`` (resolve, load,
decode + features of one instance, run a batch), ``batcher`` (the micro-batcher),
``__main__`` (the command line) and, at the HTTP layer, ``oip`` (v2 routes, metadata, binary
tensors, content types and encodings, bounded error answers). This class wires them to KServe.

Concurrency: the event loop only parses HTTP/JSON. Audio decoding and log-mel run on
``prep_threads`` threads; batches run on ``model_workers`` threads with ``torch_threads`` intra-op
threads each. A request arriving when nothing else is in flight is decoded and run in one thread
hop (no batching wait); otherwise requests are micro-batched (``max_batch_size``, ``max_wait_ms``,
see MicroBatcher). Batch sizes are exported as the ``emoflow_batch_size`` histogram on /metrics.

A request is answered whole or not at all: if any of its instances is refused (a 400 naming it),
nothing of it is counted in the prediction metrics.

Run: ``python -m emoflow.serving --model_name emoflow --storage_uri <ref> [--host 127.0.0.1]``
(``python -m emoflow.serving.predictor`` is the same) where ``<ref>`` is a model folder (e.g.
``/mnt/models`` filled by KServe's storage initializer), an ``s3://`` registry version prefix, or
``registry://<name>@<alias|version>`` in ``--store``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from typing import Any

from kserve import Model

from emoflow.serving.admission import Hold, TooLarge, budget_for, reserve_audio
from emoflow.serving.batcher import BATCH_SIZE, MicroBatcher
from emoflow.serving.model import EmotionModel, Instance, InstanceError
from emoflow.serving.protocol import BadRequest, RequestParser
from emoflow.serving.responses import PROTOCOL_COUNT, input_types, output_types, v1_response, v2_response
from emoflow.serving.settings import ServingConfig

log = logging.getLogger("emoflow.serving")

PLATFORM = "pytorch_emoflow"  # v2 model metadata: the framework/backend serving the model


class EmotionPredictor(Model):
    def __init__(self, name: str, storage_uri: str, *, store: str | None = None,
                 config: ServingConfig | None = None, metrics=None):
        super().__init__(name)
        self.storage_uri = storage_uri
        self.store = store
        self.config = config or ServingConfig()
        self.metrics = metrics
        self.runner = EmotionModel(self.config)
        self.parser = RequestParser(self.config)
        self.budget = budget_for(self.config)  # memory in flight, shared with the HTTP edge
        # decoding/features run on `prep_threads` threads and batches on `model_workers` threads,
        # so neither blocks the event loop
        self._prep_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.config.prep_threads), thread_name_prefix="emoflow-prep",
            initializer=self.runner.set_threads)
        self._model_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.config.model_workers), thread_name_prefix="emoflow-model",
            initializer=self.runner.set_threads)
        self.batcher = MicroBatcher(self.runner.run_batch, self.config.max_batch_size, self.config.max_wait_ms,
                                    executor=self._model_pool, workers=self.config.model_workers,
                                    observe=BATCH_SIZE.observe if BATCH_SIZE is not None else None)

    @property
    def version(self) -> str:
        return self.runner.version

    @property
    def labels(self) -> list[str]:
        return self.runner.labels

    @property
    def text_only(self) -> bool:
        return self.runner.text_only

    def load(self) -> bool:
        runner = self.runner
        runner.load(self.storage_uri, self.store)
        self.parser = RequestParser(self.config, text_only=runner.text_only, model_inputs=runner.model.inputs,
                                    outputs=[o["name"] for o in self.get_output_types()])
        ref_path = runner.path / "reference_distribution.json"
        if self.metrics is not None and ref_path.exists():
            self.metrics.set_reference(self.name, self.version, json.loads(ref_path.read_text()))
        self.ready = True
        log.info("loaded %s version %s from %s on %s%s", self.name, self.version, runner.path, runner.device,
                 " (text-only: requests carry text, no audio)" if self.text_only else "")
        return self.ready

    # -- metadata (Open Inference Protocol) ------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return input_types(self.text_only)

    def get_output_types(self) -> list[dict]:
        return output_types(self.labels, self.runner.modality_weights)

    def metadata(self) -> dict:
        """The v2 model metadata: real inputs and outputs, the version served, the platform."""
        return {"name": self.name, "versions": [self.version], "platform": PLATFORM,
                "inputs": self.get_input_types(), "outputs": self.get_output_types()}

    # -- requests --------------------------------------------------------------------------------
    def parse(self, payload: Any, hold: Hold | None = None) -> tuple[list[Instance], bool]:
        """Instances of a V1 dict or v2 InferRequest, decoded and ready to run; the flag says v2.
        With a `hold`, their decoded memory is reserved first (emoflow.serving.admission: raises
        Overloaded). Raises BadRequest naming the first bad instance."""
        instances, is_v2 = self.parser.parse(payload)
        if hold is not None:
            try:
                reserve_audio(hold, instances, self.config)
            except TooLarge as exc:
                raise BadRequest("too_large", str(exc)) from None
        for inst in instances:
            try:
                self.runner.prepare(inst)
            except InstanceError as exc:
                raise BadRequest(exc.reason, str(exc)) from None
        return instances, is_v2

    def _parse_and_run(self, payload: Any, hold: Hold) -> tuple[list[Instance], bool, list]:
        instances, is_v2 = self.parse(payload, hold)
        return instances, is_v2, self.runner.run_batch(instances)

    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None):
        try:
            return await self._predict(payload)
        except BadRequest as exc:
            if self.metrics is not None:
                self.metrics.error(self.name, exc.kind)
            raise

    async def _predict(self, payload: Any):
        hold = Hold(self.budget)
        try:
            return await self._predict_within(payload, hold)
        finally:
            hold.release()

    async def _predict_within(self, payload: Any, hold: Hold):
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self.config.fast_path and self.batcher.idle():
            # nothing else in flight: decode and run in one hop to the model thread
            instances, is_v2, results = await self.batcher.run_alone(self._parse_and_run, payload, hold)
        else:
            self.batcher.incoming += 1  # lets the batcher wait for this request while it is decoded
            try:
                instances, is_v2 = await loop.run_in_executor(self._prep_pool, self.parse, payload, hold)
            finally:
                self.batcher.incoming -= 1
            results = await self.batcher.submit(instances)
        refused = next((inst for inst in instances if inst.error is not None), None)
        if refused is not None:  # nothing of this request is answered, nothing counted
            raise BadRequest("not_finite", f"{refused.where}: {refused.error}")
        self._count(results)
        log.debug("predict %d instances in %.1f ms", len(results), (time.perf_counter() - started) * 1000)
        if not is_v2:
            return v1_response(results, self.name, self.version)
        return v2_response(payload.id, results, self.labels, self.name, self.version)

    def _count(self, results: list[dict]) -> None:
        """Prediction metrics of a request answered whole."""
        if self.metrics is not None:
            for res in results:
                self.metrics.observe(self.name, self.version, res["label"], max(res["probabilities"].values()),
                                     res["mode"])
        if PROTOCOL_COUNT is not None:
            for res in results:
                PROTOCOL_COUNT.labels(self.name, res["protocol"]).inc()


if __name__ == "__main__":
    from emoflow.serving.__main__ import main

    main()
