"""The KServe predictor: a ``kserve.Model`` that serves a registered emoflow model.

Requests:
- V1 ``POST /v1/models/<name>:predict`` with ``{"instances": [{"audio": <base64 WAV/FLAC/MP3>,
  "text": "optional", "speaker": "optional"}]}``;
- Open Inference Protocol v2 ``POST /v2/models/<name>/infer`` with BYTES inputs ``audio``
  (base64 strings) and optional ``text``.

Each answer gives the label, per-emotion probabilities, the model name and version, the mode
(``audio+text``, ``audio-only`` or ``asr-text``) and the modality weights where the model has them.
Client errors are 400s naming the problem; concurrent requests are micro-batched.

Run: ``python -m emoflow.serving.predictor --model_name emoflow --storage_uri <ref> [--host 127.0.0.1]``
where ``<ref>`` is a model folder (e.g. ``/mnt/models`` filled by KServe's storage initializer), an
``s3://`` registry version prefix, or ``registry://<name>@<alias|version>`` in ``--store``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

log = logging.getLogger("emoflow.serving")

MODES = ("audio+text", "audio-only", "asr-text")


@dataclass
class ServingConfig:
    max_request_bytes: int = 10 * 1024 * 1024
    max_audio_seconds: float = 30.0
    min_audio_seconds: float = 0.1
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    asr_backend: str = "none"       # none | faster-whisper | pocketsphinx: used when text is missing
    device: str = "auto"
    max_text_chars: int = 2000


def resolve_model_dir(storage_uri: str, store_uri: str | None = None) -> tuple[Path, dict]:
    """Return a local folder holding the registered version, and its registry metadata."""
    from emoflow.config import home
    from emoflow.registry import Registry
    from emoflow.storage import open_store

    if storage_uri.startswith("registry://"):
        from emoflow.config import store_uri as default_store

        registry = Registry(open_store(store_uri or default_store()))
        ref = storage_uri[len("registry://"):]
        name, version = registry.resolve(ref)
        target = home() / "serving-cache" / name / version
        if not (target / "manifest.json").exists():
            registry.download(f"{name}@{version}", target)
        return target, {"name": name, "version": version, **registry.show(f"{name}@{version}")}
    if storage_uri.startswith("s3://"):
        from emoflow.config import config_hash
        from emoflow.storage import fetch_to_local

        store = open_store(storage_uri)
        target = home() / "serving-cache" / config_hash(storage_uri)
        for key in store.list(""):
            dest = target / key
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                fetch_to_local(store.uri(key), dest)
        storage_uri = str(target)
    path = Path(storage_uri.removeprefix("file://"))
    if not (path / "model").is_dir():
        raise FileNotFoundError(f"{storage_uri}: no model/ folder (expected a registered emoflow version)")
    meta = {}
    if (path / "manifest.json").exists():
        meta = json.loads((path / "manifest.json").read_text())
    return path, meta


@dataclass
class Instance:
    audio: bytes
    text: str | None = None
    speaker: str | None = None
    wave: np.ndarray | None = None
    logmel: np.ndarray | None = None
    mode: str = "audio+text"
    result: dict = field(default_factory=dict)


class MicroBatcher:
    """Collects concurrent instances into batches of at most `max_batch` within `max_wait_ms`."""

    def __init__(self, run_batch, max_batch: int, max_wait_ms: float):
        self.run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0

    async def submit(self, instances: list[Instance]) -> list[dict]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._loop())
        loop = asyncio.get_running_loop()
        futures = []
        for inst in instances:
            fut = loop.create_future()
            await self.queue.put((inst, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            pending = [first]
            deadline = loop.time() + self.max_wait
            while len(pending) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            self.batches += 1
            try:
                results = await loop.run_in_executor(None, self.run_batch, [inst for inst, _ in pending])
                for (_, fut), res in zip(pending, results):
                    if not fut.done():
                        fut.set_result(res)
            except Exception as exc:  # a server fault: every waiting request gets it
                for _, fut in pending:
                    if not fut.done():
                        fut.set_exception(exc)


class EmotionPredictor(Model):
    def __init__(self, name: str, storage_uri: str, *, store: str | None = None,
                 config: ServingConfig | None = None, metrics=None):
        super().__init__(name)
        self.storage_uri = storage_uri
        self.store = store
        self.config = config or ServingConfig()
        self.metrics = metrics
        self.model = None
        self.version = "unknown"
        self.labels: list[str] = []
        self.feature_config = None
        self.device = None
        self._lock = threading.Lock()
        self._asr = None
        self.batcher = MicroBatcher(self._run_batch, self.config.max_batch_size, self.config.max_wait_ms)

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> bool:
        from emoflow.audio.logmel import LogMelConfig
        from emoflow.models import load_model
        from emoflow.training.trainer import pick_device

        path, meta = resolve_model_dir(self.storage_uri, self.store)
        self.device = pick_device(self.config.device)
        model = load_model(path / "model").to(self.device).eval()
        fc_path = path / "model" / "feature_config.json"
        self.feature_config = LogMelConfig(**(json.loads(fc_path.read_text()) if fc_path.exists() else {}))
        self.labels = list(model.labels)
        self.version = str(meta.get("version") or meta.get("metadata", {}).get("version") or "unversioned")
        self.model = model
        ref_path = path / "reference_distribution.json"
        if self.metrics is not None and ref_path.exists():
            self.metrics.set_reference(self.name, self.version, json.loads(ref_path.read_text()))
        self.ready = True
        log.info("loaded %s version %s from %s on %s", self.name, self.version, path, self.device)
        return self.ready

    # -- request parsing -------------------------------------------------------------------------
    def _error(self, reason: str, message: str) -> InvalidInput:
        if self.metrics is not None:
            self.metrics.error(self.name, reason)
        return InvalidInput(message)

    def _decode_audio(self, value: Any, where: str) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
            try:  # v2 BYTES may arrive as the base64 text itself
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return raw
        if not isinstance(value, str):
            raise self._error("wrong_type", f"{where}: 'audio' must be a base64 string, got {type(value).__name__}")
        if not value:
            raise self._error("empty", f"{where}: 'audio' is empty")
        if len(value) > self.config.max_request_bytes * 4 // 3 + 4:
            raise self._error("too_large", f"{where}: audio is larger than {self.config.max_request_bytes} bytes")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise self._error("bad_base64", f"{where}: 'audio' is not valid base64") from None

    def _instance(self, audio: Any, text: Any, speaker: Any, where: str) -> Instance:
        data = self._decode_audio(audio, where)
        if not data:
            raise self._error("empty", f"{where}: 'audio' decodes to zero bytes")
        if len(data) > self.config.max_request_bytes:
            raise self._error("too_large", f"{where}: audio is {len(data)} bytes, the limit is {self.config.max_request_bytes}")
        if text is not None and not isinstance(text, str):
            raise self._error("wrong_type", f"{where}: 'text' must be a string, got {type(text).__name__}")
        if text is not None and len(text) > self.config.max_text_chars:
            raise self._error("too_large", f"{where}: 'text' is longer than {self.config.max_text_chars} characters")
        if speaker is not None and not isinstance(speaker, str):
            raise self._error("wrong_type", f"{where}: 'speaker' must be a string")
        inst = Instance(audio=data, text=text if text and text.strip() else None, speaker=speaker)
        self._prepare(inst, where)
        return inst

    def _prepare(self, inst: Instance, where: str) -> None:
        from emoflow.audio.io import AudioError, load_audio
        from emoflow.audio.logmel import logmel

        try:
            wave = load_audio(inst.audio, sr=16000)
        except AudioError as exc:
            raise self._error("not_audio", f"{where}: 'audio' could not be decoded as audio ({exc})") from None
        except Exception as exc:  # decoders raise many types on garbage input
            raise self._error("not_audio", f"{where}: 'audio' could not be decoded as audio ({type(exc).__name__})") from None
        seconds = len(wave) / 16000
        if seconds > self.config.max_audio_seconds:
            raise self._error("too_long", f"{where}: audio is {seconds:.1f} s, the limit is {self.config.max_audio_seconds} s")
        if seconds < self.config.min_audio_seconds:
            raise self._error("too_short", f"{where}: audio is {seconds:.3f} s, the minimum is {self.config.min_audio_seconds} s")
        if not np.all(np.isfinite(wave)):
            raise self._error("not_audio", f"{where}: audio has non-finite samples")
        inst.wave = wave
        if "logmel" in self.model.inputs:
            inst.logmel = logmel(wave, self.feature_config)
        uses_text = "text" in self.model.inputs
        if not uses_text:
            inst.mode = "audio-only"
        elif inst.text is None:
            if self.config.asr_backend != "none":
                inst.text = self._transcribe(wave)
                inst.mode = "asr-text"
            elif "audio" in self.model.modes:
                inst.mode = "audio-only"
            else:
                inst.text, inst.mode = "", "audio+text"

    def _transcribe(self, wave: np.ndarray) -> str:
        from emoflow.text.transcribe import get_backend

        with self._lock:
            if self._asr is None:
                self._asr = get_backend(self.config.asr_backend)
        return self._asr.transcribe_array(wave)["text"]

    def parse(self, payload: Any) -> tuple[list[Instance], bool]:
        """Instances from a V1 dict or a v2 InferRequest; the flag says v2."""
        if isinstance(payload, InferRequest):
            inputs = {inp.name: inp for inp in payload.inputs}
            if "audio" not in inputs:
                raise self._error("missing_audio", "v2 request: input 'audio' (BYTES) is required")
            unknown = sorted(set(inputs) - {"audio", "text", "speaker"})
            if unknown:
                raise self._error("wrong_type", f"v2 request: unknown inputs {unknown}")
            columns = {}
            for name, inp in inputs.items():
                if inp.datatype != "BYTES":
                    raise self._error("wrong_type", f"v2 input {name!r}: datatype must be BYTES, got {inp.datatype}")
                values = inp.data if isinstance(inp.data, list) else [inp.data]
                declared = int(np.prod(inp.shape)) if inp.shape else len(values)
                if declared != len(values):
                    raise self._error("wrong_type", f"v2 input {name!r}: shape {inp.shape} does not match {len(values)} values")
                columns[name] = [v.decode("utf-8", "replace") if isinstance(v, bytes) and name != "audio" else v for v in values]
            n = len(columns["audio"])
            for name, vals in columns.items():
                if len(vals) != n:
                    raise self._error("wrong_type", f"v2 input {name!r} has {len(vals)} values, 'audio' has {n}")
            if n == 0:
                raise self._error("empty", "v2 request: 'audio' has no values")
            insts = [
                self._instance(columns["audio"][i], (columns.get("text") or [None] * n)[i] or None,
                               (columns.get("speaker") or [None] * n)[i] or None, f"inputs[audio][{i}]")
                for i in range(n)
            ]
            return insts, True
        if not isinstance(payload, dict):
            raise self._error("wrong_type", "request body must be a JSON object")
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise self._error("missing_audio", "V1 request: 'instances' must be a non-empty list")
        insts = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise self._error("wrong_type", f"instances[{i}] must be an object with 'audio' and optional 'text'")
            if "audio" not in inst:
                raise self._error("missing_audio", f"instances[{i}]: 'audio' is required")
            unknown = sorted(set(inst) - {"audio", "text", "speaker"})
            if unknown:
                raise self._error("wrong_type", f"instances[{i}]: unknown fields {unknown}")
            insts.append(self._instance(inst["audio"], inst.get("text"), inst.get("speaker"), f"instances[{i}]"))
        return insts, False

    # -- inference -------------------------------------------------------------------------------
    def _run_batch(self, instances: list[Instance]) -> list[dict]:
        from emoflow.training.data import Item, make_collate

        out: list[dict | None] = [None] * len(instances)
        by_mode: dict[str, list[int]] = {}
        for i, inst in enumerate(instances):
            by_mode.setdefault(inst.mode, []).append(i)
        tokenize = getattr(self.model, "tokenize", None) if "text" in self.model.inputs else None
        for mode, idx in by_mode.items():
            items = [
                Item(id=str(i), label=0, text=instances[i].text or "", dialogue=str(i),
                     logmel=instances[i].logmel, wave=instances[i].wave if "wave" in self.model.inputs else None)
                for i in idx
            ]
            batch = make_collate(tokenize)(items)
            batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            model_mode = "audio" if mode == "audio-only" and "text" in self.model.inputs else "both"
            with self._lock, torch.inference_mode():
                result = self.model(batch, mode=model_mode)
            probs = torch.softmax(result["logits"].float(), -1).cpu().numpy()
            weights = result.get("modality_weights")
            weights = weights.float().cpu().numpy() if weights is not None else None
            for row, i in enumerate(idx):
                label = self.labels[int(probs[row].argmax())]
                out[i] = {
                    "label": label,
                    "probabilities": {lab: round(float(p), 6) for lab, p in zip(self.labels, probs[row])},
                    "mode": mode,
                    "model": self.name,
                    "version": self.version,
                }
                if weights is not None:
                    out[i]["modality_weights"] = {"audio": float(weights[row][0]), "text": float(weights[row][1])}
                if instances[i].mode == "asr-text":
                    out[i]["asr_text"] = instances[i].text
        return out  # type: ignore[return-value]

    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None):
        started = time.perf_counter()
        instances, is_v2 = self.parse(payload)
        results = await self.batcher.submit(instances)
        if self.metrics is not None:
            for res in results:
                self.metrics.observe(self.name, self.version, res["label"], max(res["probabilities"].values()), res["mode"])
        if not is_v2:
            return {"predictions": results, "model_name": self.name, "model_version": self.version}
        probs = np.array([[r["probabilities"][lab] for lab in self.labels] for r in results], dtype=np.float32)
        outputs = [
            InferOutput("label", [len(results)], "BYTES", [r["label"] for r in results]),
            InferOutput("probabilities", list(probs.shape), "FP32", probs.flatten().tolist(),
                        parameters={"emotions": ",".join(self.labels)}),
            InferOutput("mode", [len(results)], "BYTES", [r["mode"] for r in results]),
        ]
        if all("modality_weights" in r for r in results):
            w = [[r["modality_weights"]["audio"], r["modality_weights"]["text"]] for r in results]
            outputs.append(InferOutput("modality_weights", [len(results), 2], "FP32", [x for row in w for x in row]))
        log.debug("predict %d instances in %.1f ms", len(results), (time.perf_counter() - started) * 1000)
        return InferResponse(response_id=payload.id or "", model_name=self.name, model_version=self.version,
                             infer_outputs=outputs)


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(parents=[model_server.parser], description="emoflow KServe predictor")
    parser.add_argument("--storage_uri", default=os.environ.get("STORAGE_URI", "/mnt/models"),
                        help="model folder, s3:// version prefix, or registry://name@alias")
    parser.add_argument("--store", default=None, help="artifact store URI for registry:// references")
    parser.add_argument("--host", default=os.environ.get("EMOFLOW_SERVE_HOST", "0.0.0.0"),
                        help="bind address (0.0.0.0 in a pod; use 127.0.0.1 on a workstation)")
    parser.add_argument("--max_request_bytes", type=int, default=ServingConfig.max_request_bytes)
    parser.add_argument("--max_audio_seconds", type=float, default=ServingConfig.max_audio_seconds)
    parser.add_argument("--max_batch_size", type=int, default=ServingConfig.max_batch_size)
    parser.add_argument("--max_wait_ms", type=float, default=ServingConfig.max_wait_ms)
    parser.add_argument("--asr_backend", default=ServingConfig.asr_backend,
                        help="ASR for requests without text: none, faster-whisper, pocketsphinx")
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> None:
    from emoflow.monitoring.metrics import default_metrics
    from emoflow.serving.server import serve

    args, _ = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServingConfig(
        max_request_bytes=args.max_request_bytes, max_audio_seconds=args.max_audio_seconds,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        asr_backend=args.asr_backend, device=args.device,
    )
    model = EmotionPredictor(args.model_name, args.storage_uri, store=args.store, config=config,
                             metrics=default_metrics())
    serve(model, host=args.host, port=args.http_port)


if __name__ == "__main__":
    main()
