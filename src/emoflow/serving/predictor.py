"""The KServe predictor: a ``kserve.Model`` that serves a registered emoflow model.

Requests:
- V1 ``POST /v1/models/<name>:predict`` with ``{"instances": [{"audio": <base64 WAV/FLAC/MP3>,
  "text": "optional", "speaker": "optional"}]}``;
- Open Inference Protocol v2 ``POST /v2/models/<name>/infer`` with BYTES inputs ``audio``
  (base64 strings) and optional ``text`` and ``speaker``.

Text-only models (no audio input: none of ``logmel``, ``wave``, ``speech_emb`` in the model's
inputs, e.g. the A1 ``meld-text`` presets) take ``{"text": "...", "speaker": "optional"}`` instances
(v2: BYTES input ``text`` required, ``speaker`` optional); the text must be non-empty and ``audio``
is refused (a 400 naming the instance: the model cannot use it), and the mode is ``text-only``.
Each instance is predicted alone, as its own dialogue: a request carries no dialogue context, so a
model with ``text.context: dialogue`` runs its Bi-GRU over that one utterance (as evaluation of a
single-utterance dialogue would), not over the conversation it came from.

Each answer gives the label, per-emotion probabilities, the model name and version, the mode
(``audio+text``, ``audio-only``, ``asr-text`` or ``text-only``), the protocol (``strict`` or
``speaker-normalised``) and the modality weights where the model has them.

Models on cached encoder embeddings (input ``speech_emb``, the ``offline`` presets) get them online:
load() builds the run's encoders from ``model/feature_config.json`` (same specs, options and seed
as the features step) and each batch runs them on the decoded audio, then assembles and collates
the model inputs as training does. With speaker normalisation (on when the run's feature_config
has ``speaker_norm``; ``--speaker_norm on|off`` forces it), a request's ``speaker`` adds the
utterance to that speaker's running statistics (SpeakerStats: LRU, ``--max_speakers``,
``--speaker_memory_mb``) and, from ``--min_speaker_utterances`` on, the embeddings are z-normalised
with them (protocol ``speaker-normalised``); otherwise, or without a speaker, the protocol is strict.
Client errors are 400s naming the problem (bodies over the limit: 413); audio is refused from its
header when it declares more than the duration limit, before any sample is decoded.

Concurrency: the event loop only parses HTTP/JSON. Audio decoding and log-mel run on
``prep_threads`` threads; batches run on ``model_workers`` threads with ``torch_threads`` intra-op
threads each. A request arriving when nothing else is in flight is decoded and run in one thread
hop (no batching wait); otherwise requests are micro-batched (``max_batch_size``, ``max_wait_ms``,
see MicroBatcher). Batch sizes are exported as the ``emoflow_batch_size`` histogram on /metrics.

Run: ``python -m emoflow.serving.predictor --model_name emoflow --storage_uri <ref> [--host 127.0.0.1]``
where ``<ref>`` is a model folder (e.g. ``/mnt/models`` filled by KServe's storage initializer), an
``s3://`` registry version prefix, or ``registry://<name>@<alias|version>`` in ``--store``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import gc
import io
import json
import logging
import math
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

# batch sizes the micro-batcher runs (lone requests on the fast path count as batches of 1)
try:
    from prometheus_client import Counter, Histogram

    BATCH_SIZE = Histogram("emoflow_batch_size", "Instances per model batch run by the predictor",
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))
    # strict and speaker-normalised answers of one model differ in distribution: kept apart here
    PROTOCOL_COUNT = Counter("emoflow_protocol", "Predictions answered, by protocol", ["model", "protocol"])
except ValueError:  # module imported twice under two names: reuse nothing, record nothing
    BATCH_SIZE = PROTOCOL_COUNT = None

MODES = ("audio+text", "audio-only", "asr-text", "text-only")
# model inputs that carry audio: a model with none of them is served text-only
AUDIO_INPUTS = ("logmel", "wave", "speech_emb")
SPEAKER_NORM = ("auto", "on", "off")


def default_torch_threads() -> int:
    """Intra-op threads for CPU inference: half the cores (1 on a 2-core machine, leaving the other
    core to HTTP and decoding; more threads than that only contend with the event loop)."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass
class ServingConfig:
    max_request_bytes: int = 10 * 1024 * 1024   # audio bytes per request (the body may carry base64 + JSON)
    max_audio_seconds: float = 30.0
    min_audio_seconds: float = 0.1
    max_instances: int = 64                       # instances per request
    max_batch_size: int = 16
    max_wait_ms: float = 2.0    # wait for more only while other requests are being decoded
    asr_backend: str = "none"       # none | faster-whisper | pocketsphinx: used when text is missing
    device: str = "auto"
    max_text_chars: int = 2000
    max_speaker_chars: int = 200
    torch_threads: int = field(default_factory=default_torch_threads)
    prep_threads: int = 2         # threads decoding audio and computing features
    channels_last: bool = True    # CPU convolutions run about 2x faster in NHWC
    fast_path: bool = True        # a lone request is decoded and run in one thread hop
    model_workers: int = 2        # batches run concurrently (each on torch_threads threads)
    # speech_emb models: per-speaker normalisation ("auto": as the model's feature_config says)
    speaker_norm: str = "auto"
    max_speakers: int = 1000
    min_speaker_utterances: int = 5
    speaker_memory_mb: float = 64.0

    @property
    def max_body_bytes(self) -> int:
        """Largest HTTP body accepted: the audio limit in base64 plus room for JSON and text."""
        return self.max_request_bytes * 4 // 3 + 64 * 1024


SAMPLE_RATE = 16000
MIN_NATIVE_RATE, MAX_NATIVE_RATE = 1000, 384000
MAX_CHANNELS = 16


class ClientAudioError(ValueError):
    """The uploaded audio is unusable (reason is a metrics label, message names the problem)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_audio_bounded(data: bytes, max_seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode encoded audio to float32 mono at `sr`, refusing anything longer than `max_seconds`
    before its samples are read (a small compressed file can declare hours of audio).

    soundfile reads WAV/FLAC/OGG/MP3 headers first; anything it refuses goes to PyAV, which stops
    decoding as soon as the limit is passed. Raises ClientAudioError.
    """
    import soundfile as sf
    import soxr

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as sf_exc:  # noqa: BLE001 (libsndfile raises several types on garbage)
        mono, native = _decode_av(data, max_seconds, sf_exc)
    else:
        with f:
            native, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
            _check_format(native, channels)
            if frames / native > max_seconds:
                raise ClientAudioError("too_long", f"audio is {frames / native:.1f} s, the limit is {max_seconds:g} s")
            try:
                block = f.read(frames=frames, dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001 (corrupt data after a valid header)
                raise ClientAudioError("not_audio", f"audio could not be decoded ({type(exc).__name__}: {exc})") from None
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
    if mono.size == 0:
        raise ClientAudioError("empty", "audio holds no samples")
    if not np.isfinite(mono).all():
        raise ClientAudioError("not_audio", "audio has non-finite samples (NaN or infinity)")
    if native != sr:
        mono = soxr.resample(mono, native, sr, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _check_format(native: int, channels: int) -> None:
    if not MIN_NATIVE_RATE <= native <= MAX_NATIVE_RATE:
        raise ClientAudioError("not_audio", f"audio sample rate {native} Hz is outside "
                                            f"{MIN_NATIVE_RATE}..{MAX_NATIVE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ClientAudioError("not_audio", f"audio has {channels} channels, at most {MAX_CHANNELS} are accepted")


def _decode_av(data: bytes, max_seconds: float, sf_exc: Exception) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise ClientAudioError("not_audio", "audio could not be decoded (no audio stream found)")
            stream = container.streams.audio[0]
            native = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 1)
            _check_format(native, channels)
            limit = int(max_seconds * native) + 1
            resampler = av.AudioResampler(format="fltp", layout=None, rate=native)
            chunks, total = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))  # channels averaged
                    total += chunks[-1].size
                if total > limit:
                    raise ClientAudioError("too_long", f"audio is longer than the limit of {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
    except ClientAudioError:
        raise
    except Exception as av_exc:  # noqa: BLE001 (FFmpeg raises many types on garbage input)
        raise ClientAudioError("not_audio", f"audio could not be decoded as WAV/FLAC/OGG/MP3/MP4 "
                                            f"(soundfile: {sf_exc}; av: {type(av_exc).__name__})") from None
    mono = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return mono, native


def _rows(arrays: dict) -> set[str]:
    """Statistics names whose rows each count (frames), as in emoflow.evaluation.normalization."""
    return {k for k in arrays if k.endswith("|frames")}


def resolve_model_dir(storage_uri: str, store_uri: str | None = None) -> tuple[Path, dict]:
    """Return a local folder holding the registered version, and its registry metadata."""
    from emoflow.config import home
    from emoflow.registry import Registry
    from emoflow.storage import open_store

    if storage_uri.startswith("registry://"):
        from emoflow.config import store_uri as default_store

        from emoflow.config import config_hash

        store = store_uri or default_store()
        registry = Registry(open_store(store))
        ref = storage_uri[len("registry://"):]
        name, version = registry.resolve(ref)
        # keyed by store too: two stores can both hold an "emoflow" v1
        target = home() / "serving-cache" / config_hash(str(store)) / name / version
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
    audio: bytes                   # b"" for text-only models
    text: str | None = None
    speaker: str | None = None
    wave: np.ndarray | None = None
    logmel: np.ndarray | None = None
    emb: dict | None = None        # speech_emb models: assembled embedding inputs
    mode: str = "audio+text"
    protocol: str = "strict"
    result: dict = field(default_factory=dict)


class MicroBatcher:
    """Collects concurrent instances into batches of at most `max_batch` and runs up to `workers`
    batches at a time on the `executor` (a pool of `workers` threads).

    Batching is greedy: a batch is collected when a worker is free and takes whatever is queued,
    so a lone request never waits, and requests arriving while every worker is busy form the
    next batch. It waits up to `max_wait_ms` for more only while `incoming` (requests still being
    decoded, announced by the caller) is non-zero. An exception in a batch reaches every request
    of that batch and no other; the batcher goes on with the next one. No lock is held across
    batches.
    """

    def __init__(self, run_batch, max_batch: int, max_wait_ms: float, executor=None, observe=None,
                 workers: int = 1):
        self.run_batch = run_batch
        self.observe = observe   # called with each batch size (a metrics hook)
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.executor = executor
        self.workers = max(1, int(workers))
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self._tasks: set = set()
        self.incoming = 0        # requests announced but not yet submitted
        self.running = 0         # batches on worker threads now
        self.direct = 0          # requests on the idle fast path (see `run_alone`)
        self.batches = 0         # batches run so far
        self.items = 0           # instances run so far
        self.largest = 0         # largest batch so far

    def _ensure_worker(self) -> None:
        if self.queue is None:
            self.queue = asyncio.Queue()
        if self.worker is None or self.worker.done():  # first use, or the collector died: (re)start it
            self.worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, instances: list) -> list:
        """Queue `instances` and wait for their results (in order)."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in instances]
        for inst, fut in zip(instances, futures):
            self.queue.put_nowait((inst, fut))
        return list(await asyncio.gather(*futures))

    def idle(self) -> bool:
        """Nothing queued, running, being decoded or on the fast path."""
        return (self.running == 0 and self.incoming == 0 and self.direct == 0
                and (self.queue is None or self.queue.empty()))

    async def run_alone(self, fn, *args):
        """Fast path for a lone request: `fn(*args)` (decode and run as one job) on a worker
        thread, one thread hop instead of two. Callers use it only when `idle()`."""
        self.direct += 1
        self.batches += 1
        self.items += 1
        self.largest = max(self.largest, 1)
        if self.observe is not None:
            self.observe(1)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.direct -= 1

    def _drain(self, pending: list) -> None:
        while len(pending) < self.max_batch and not self.queue.empty():
            pending.append(self.queue.get_nowait())

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        pending = [await self.queue.get()]
        self._drain(pending)
        deadline = loop.time() + self.max_wait
        while len(pending) < self.max_batch and self.incoming > 0:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                pending.append(await asyncio.wait_for(self.queue.get(), timeout))
            except asyncio.TimeoutError:
                break
            self._drain(pending)
        return pending

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self.workers)
        while True:
            await free.acquire()  # collect only when a worker is free: meanwhile the queue fills
            try:
                pending = [(inst, fut) for inst, fut in await self._collect() if not fut.done()]  # drop cancelled
            except BaseException:
                free.release()
                raise
            if not pending:
                free.release()
                continue
            self.batches += 1
            self.items += len(pending)
            self.largest = max(self.largest, len(pending))
            if self.observe is not None:
                self.observe(len(pending))
            self.running += 1
            task = asyncio.get_running_loop().create_task(self._run(pending, free))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, pending: list, free: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [inst for inst, _ in pending])
            if len(results) != len(pending):
                raise RuntimeError(f"batch of {len(pending)} returned {len(results)} results")
        except Exception as exc:  # a server fault: every request of this batch gets it
            for _, fut in pending:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self.running -= 1
            free.release()
        for (_, fut), res in zip(pending, results):
            if not fut.done():
                fut.set_result(res)


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
        self.encoders: list = []         # EmbeddingCaches used online (speech_emb models)
        self.speaker_stats = None        # SpeakerStats when speaker normalisation is on
        self.device = None
        self._lock = threading.Lock()   # guards the lazy ASR backend only
        self._asr = None
        # decoding/features run on `prep_threads` threads and batches on `model_workers` threads,
        # so neither blocks the event loop
        self._prep_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.config.prep_threads), thread_name_prefix="emoflow-prep",
            initializer=self._set_threads)
        self._model_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.config.model_workers), thread_name_prefix="emoflow-model",
            initializer=self._set_threads)
        self._tokenize_lock = threading.Lock()  # HF fast tokenizers are not safe to call concurrently
        self.batcher = MicroBatcher(self._run_batch, self.config.max_batch_size, self.config.max_wait_ms,
                                    executor=self._model_pool, workers=self.config.model_workers,
                                    observe=BATCH_SIZE.observe if BATCH_SIZE is not None else None)

    def _set_threads(self) -> None:
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> bool:
        from emoflow.audio.logmel import LogMelConfig
        from emoflow.models import load_model
        from emoflow.training.trainer import pick_device

        path, meta = resolve_model_dir(self.storage_uri, self.store)
        self._set_threads()
        self.device = pick_device(self.config.device)
        model = load_model(path / "model").to(self.device).eval()
        if self.config.channels_last and torch.device(self.device).type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        fc_path = path / "model" / "feature_config.json"
        fc = json.loads(fc_path.read_text()) if fc_path.exists() else {}
        if set(model.inputs) & set(AUDIO_INPUTS):
            known = {f.name for f in dataclasses.fields(LogMelConfig)}
            self.feature_config = LogMelConfig(**{k: v for k, v in fc.items() if k in known})
        else:  # text-only: no audio, no features (its feature_config.json may be empty or absent)
            self.feature_config = None
        if "speech_emb" in model.inputs:
            self._load_encoders(fc, fc_path)
        self.labels = list(model.labels)
        self.version = str(meta.get("version") or meta.get("metadata", {}).get("version") or "unversioned")
        self.model = model
        ref_path = path / "reference_distribution.json"
        if self.metrics is not None and ref_path.exists():
            self.metrics.set_reference(self.name, self.version, json.loads(ref_path.read_text()))
        # long-lived objects (weights, modules, tokenizer, imports) out of the garbage collector's
        # view: full collections then scan only per-request garbage, which trims latency spikes
        gc.collect()
        gc.freeze()
        self.ready = True
        log.info("loaded %s version %s from %s on %s%s", self.name, self.version, path, self.device,
                 " (text-only: requests carry text, no audio)" if self.text_only else "")
        return self.ready

    @property
    def text_only(self) -> bool:
        """The loaded model takes no audio input (see AUDIO_INPUTS): requests carry text only."""
        return self.model is not None and not set(self.model.inputs) & set(AUDIO_INPUTS)

    def _load_encoders(self, fc: dict, fc_path: Path) -> None:
        """The run's speech encoders, loaded and frozen, and the speaker statistics when enabled."""
        from emoflow.audio.embeddings import speech_caches
        from emoflow.serving.speaker_stats import SpeakerStats

        if self.config.speaker_norm not in SPEAKER_NORM:
            raise ValueError(f"speaker_norm must be one of {SPEAKER_NORM}, got {self.config.speaker_norm!r}")
        caches = speech_caches(fc, device=str(self.device), progress=False)
        if not caches:
            raise ValueError(f"{fc_path}: the model takes speech_emb but the feature config lists no 'encoders'")
        # training reads extra["embeddings"] from manifests written with sorted keys: caches in hash order
        self.encoders = sorted((c.load() for c in caches), key=lambda c: c.key_hash)
        probe = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        names = self._stat_arrays([(c.key_hash, c.embed([probe])[0]) for c in self.encoders])  # also a warm-up
        on = bool(fc.get("speaker_norm")) if self.config.speaker_norm == "auto" else self.config.speaker_norm == "on"
        self.speaker_stats = None
        if on:
            stats = SpeakerStats(self.config.max_speakers, self.config.min_speaker_utterances,
                                 max(1, int(self.config.speaker_memory_mb * 2 ** 20)))
            need = stats.speaker_bytes(names, rows=_rows(names))
            if need > stats.max_bytes:
                raise ValueError(f"speaker statistics of this model need {need} bytes per speaker, more than "
                                 f"speaker_memory_mb={self.config.speaker_memory_mb}")
            self.speaker_stats = stats
        log.info("speech encoders %s (speaker normalisation %s)",
                 [c.encoder.get("source") for c in self.encoders], "on" if on else "off")

    @staticmethod
    def _stat_arrays(parts: list[tuple[str, dict]]) -> dict[str, np.ndarray]:
        """One utterance's embedding arrays keyed "<cache hash>|<array name>" (speaker statistics names)."""
        return {f"{h}|{name}": a for h, d in parts for name, a in d.items()}

    def embedding_inputs(self, instances: list[Instance]) -> list[dict]:
        """speech_emb models: run the encoders on the instances' waves (in batches of max_batch_size),
        normalise per speaker where enabled (this updates the speakers' statistics), and set each
        instance's ``emb`` (the inputs training assembles from the cache) and ``protocol``."""
        from emoflow.training.data import assemble_embeddings

        step = max(1, self.config.max_batch_size)
        raw = [[d for s in range(0, len(instances), step) for d in c.embed([x.wave for x in instances[s:s + step]])]
               for c in self.encoders]
        for i, inst in enumerate(instances):
            parts = [(c.key_hash, raw[k][i]) for k, c in enumerate(self.encoders)]
            inst.protocol = "strict"
            if self.speaker_stats is not None and inst.speaker:
                arrays = self._stat_arrays(parts)
                normed = self.speaker_stats.observe(inst.speaker, arrays, rows=_rows(arrays))
                if normed is not None:
                    parts = [(h, {name: normed[f"{h}|{name}"] for name in d}) for h, d in parts]
                    inst.protocol = "speaker-normalised"
            inst.emb = assemble_embeddings(parts, where=f"instance {i}")
        return [inst.emb for inst in instances]

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
            raise self._error("too_large", f"{where}: audio is larger than the limit of {self.config.max_request_bytes} bytes")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise self._error("bad_base64", f"{where}: 'audio' is not valid base64") from None

    def _text(self, value: Any, field_name: str, limit: int, where: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        if not isinstance(value, str):
            raise self._error("wrong_type", f"{where}: {field_name!r} must be a string, got {type(value).__name__}")
        if len(value) > limit:
            raise self._error("too_large", f"{where}: {field_name!r} is longer than {limit} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self._error("wrong_type", f"{where}: {field_name!r} is not valid unicode (lone surrogate)") from None
        return value

    def _instance(self, audio: Any, text: Any, speaker: Any, where: str) -> Instance:
        text = self._text(text, "text", self.config.max_text_chars, where)
        speaker = self._text(speaker, "speaker", self.config.max_speaker_chars, where)
        data = self._decode_audio(audio, where)
        if not data:
            raise self._error("empty", f"{where}: 'audio' decodes to zero bytes")
        if len(data) > self.config.max_request_bytes:
            raise self._error("too_large", f"{where}: audio is {len(data)} bytes, the limit is {self.config.max_request_bytes}")
        inst = Instance(audio=data, text=text if text and text.strip() else None, speaker=speaker)
        self._prepare(inst, where)
        return inst

    def _text_instance(self, text: Any, speaker: Any, where: str) -> Instance:
        """An instance of a text-only model: non-empty text, optional speaker, no audio."""
        text = self._text(text, "text", self.config.max_text_chars, where)
        speaker = self._text(speaker, "speaker", self.config.max_speaker_chars, where)
        if text is None or not text.strip():
            raise self._error("missing_text", f"{where}: 'text' is required and must not be empty "
                                              f"(this model takes text only)")
        return Instance(audio=b"", text=text, speaker=speaker, mode="text-only")

    def _no_audio(self, where: str) -> InvalidInput:
        inputs = sorted(self.model.inputs)
        return self._error("unexpected_audio", f"{where}: 'audio' is not accepted: this model takes text only "
                                               f"(inputs {inputs}) and cannot use audio; send 'text'")

    def _parse_text_only(self, payload: Any) -> tuple[list[Instance], bool]:
        """parse() for text-only models: V1 ``{"text", "speaker"}`` instances, v2 BYTES ``text``
        (required) and ``speaker``; audio is refused, not ignored."""
        if isinstance(payload, InferRequest):
            inputs = self._v2_inputs(payload)
            if "audio" in inputs:
                raise self._no_audio("v2 input 'audio'")
            if "text" not in inputs:
                raise self._error("missing_text", "v2 request: input 'text' (BYTES) is required (this model takes text only)")
            columns, n = self._v2_columns(inputs, "text", {"text", "speaker"})
            speakers = columns.get("speaker") or [None] * n
            return [self._text_instance(columns["text"][i], speakers[i] or None, f"inputs[text][{i}]")
                    for i in range(n)], True
        instances = self._v1_instances(payload, "missing_text")
        insts = []
        for i, inst in enumerate(instances):
            where = f"instances[{i}]"
            if not isinstance(inst, dict):
                raise self._error("wrong_type", f"{where} must be an object with 'text' and optional 'speaker'")
            if "audio" in inst:
                raise self._no_audio(where)
            unknown = sorted(str(k) for k in set(inst) - {"text", "speaker"})
            if unknown:
                raise self._error("wrong_type", f"{where}: unknown fields {unknown}")
            insts.append(self._text_instance(inst.get("text"), inst.get("speaker"), where))
        return insts, False

    def _prepare(self, inst: Instance, where: str) -> None:
        from emoflow.audio.logmel import logmel

        try:
            wave = decode_audio_bounded(inst.audio, self.config.max_audio_seconds)
        except ClientAudioError as exc:
            raise self._error(exc.reason, f"{where}: {exc}") from None
        seconds = len(wave) / SAMPLE_RATE
        if seconds > self.config.max_audio_seconds:
            raise self._error("too_long", f"{where}: audio is {seconds:.1f} s, the limit is {self.config.max_audio_seconds} s")
        if seconds < self.config.min_audio_seconds:
            raise self._error("too_short", f"{where}: audio is {seconds:.3f} s, the minimum is {self.config.min_audio_seconds} s")
        inst.wave = wave
        inst.audio = b""  # the encoded bytes are not needed any more
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
        return self._asr(wave).text

    def _v2_values(self, inp: Any) -> list:
        name = inp.name
        if inp.datatype != "BYTES":
            raise self._error("wrong_type", f"v2 input {name!r}: datatype must be BYTES, got {inp.datatype}")
        try:
            values = inp.data
        except Exception as exc:  # noqa: BLE001 (KServe converts binary data lazily)
            raise self._error("wrong_type", f"v2 input {name!r}: unreadable data ({type(exc).__name__}: {exc})") from None
        if isinstance(values, np.ndarray):
            values = values.tolist()
        if not isinstance(values, list):
            values = [values]
        shape = inp.shape
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                            for d in shape):
            raise self._error("wrong_type", f"v2 input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if any(isinstance(v, list) for v in values):  # nested (row-major) form, [rows, columns]
            rows_ok = all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1
            if not rows_ok or len(shape) != 2 or shape[0] != len(values):
                raise self._error("wrong_type", f"v2 input {name!r}: nested data must be {len(values)} rows of equal "
                                                f"length with a 2-d shape, got shape {list(shape)}")
            values = [x for row in values for x in row]
        declared = math.prod(shape) if shape else len(values)
        if declared != len(values):
            raise self._error("wrong_type", f"v2 input {name!r}: shape {list(shape)} does not match {len(values)} values")
        for i, v in enumerate(values):
            if not isinstance(v, (str, bytes, bytearray)):
                raise self._error("wrong_type", f"v2 input {name!r}[{i}]: BYTES values must be strings, got {type(v).__name__}")
        return values

    def _v1_instances(self, payload: Any, missing_reason: str) -> list:
        """The V1 body's ``instances`` list (non-empty, within the limit); `missing_reason` names
        what an empty request lacks (audio, or text for text-only models)."""
        if not isinstance(payload, dict):
            raise self._error("wrong_type", f"request body must be a JSON object, got {type(payload).__name__}")
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise self._error(missing_reason, "V1 request: 'instances' must be a non-empty list")
        self._check_count(len(instances), "V1 request")
        return instances

    def _v2_inputs(self, payload: InferRequest) -> dict:
        names = [inp.name for inp in payload.inputs]
        if len(set(names)) != len(names):
            raise self._error("wrong_type", f"v2 request: duplicate input names {sorted(names)}")
        return {inp.name: inp for inp in payload.inputs}

    def _v2_columns(self, inputs: dict, main: str, allowed: set[str]) -> tuple[dict[str, list], int]:
        """Each input's values; all as many as the `main` input's (at least one, within the limit)."""
        unknown = sorted(set(inputs) - allowed)
        if unknown:
            raise self._error("wrong_type", f"v2 request: unknown inputs {unknown}")
        columns = {name: self._v2_values(inp) for name, inp in inputs.items()}
        n = len(columns[main])
        for name, vals in columns.items():
            if len(vals) != n:
                raise self._error("wrong_type", f"v2 input {name!r} has {len(vals)} values, {main!r} has {n}")
        if n == 0:
            raise self._error("empty", f"v2 request: {main!r} has no values")
        self._check_count(n, "v2 request")
        return columns, n

    def _check_count(self, n: int, what: str) -> None:
        if n > self.config.max_instances:
            raise self._error("too_large", f"{what}: {n} instances, the limit is {self.config.max_instances} per request")

    def parse(self, payload: Any) -> tuple[list[Instance], bool]:
        """Instances from a V1 dict or a v2 InferRequest; the flag says v2."""
        if self.text_only:
            return self._parse_text_only(payload)
        if isinstance(payload, InferRequest):
            inputs = self._v2_inputs(payload)
            if "audio" not in inputs:
                raise self._error("missing_audio", "v2 request: input 'audio' (BYTES) is required")
            columns, n = self._v2_columns(inputs, "audio", {"audio", "text", "speaker"})
            insts = [
                self._instance(columns["audio"][i], (columns.get("text") or [None] * n)[i] or None,
                               (columns.get("speaker") or [None] * n)[i] or None, f"inputs[audio][{i}]")
                for i in range(n)
            ]
            return insts, True
        instances = self._v1_instances(payload, "missing_audio")
        insts = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise self._error("wrong_type", f"instances[{i}] must be an object with 'audio' and optional 'text'")
            if "audio" not in inst:
                raise self._error("missing_audio", f"instances[{i}]: 'audio' is required")
            unknown = sorted(str(k) for k in set(inst) - {"audio", "text", "speaker"})
            if unknown:
                raise self._error("wrong_type", f"instances[{i}]: unknown fields {unknown}")
            insts.append(self._instance(inst["audio"], inst.get("text"), inst.get("speaker"), f"instances[{i}]"))
        return insts, False

    # -- inference -------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> dict:
        with self._tokenize_lock:  # held for the tokenizer call only, never across a batch
            return self.model.tokenize(texts)

    def _run_batch(self, instances: list[Instance]) -> list[dict]:
        from emoflow.training.data import Item, make_collate

        out: list[dict | None] = [None] * len(instances)
        by_mode: dict[str, list[int]] = {}
        for i, inst in enumerate(instances):
            by_mode.setdefault(inst.mode, []).append(i)
        if "speech_emb" in self.model.inputs:
            self.embedding_inputs(instances)
        tokenize = self._tokenize if "text" in self.model.inputs and getattr(self.model, "tokenize", None) else None
        for mode, idx in by_mode.items():
            items = [
                Item(id=str(i), label=0, text=instances[i].text or "", dialogue=str(i),
                     logmel=instances[i].logmel, wave=instances[i].wave if "wave" in self.model.inputs else None,
                     emb=instances[i].emb)
                for i in idx
            ]
            batch = make_collate(tokenize)(items)
            batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            if mode == "text-only":  # every instance its own dialogue: no context across requests
                model_mode = "text" if "text" in self.model.modes else "both"
            else:
                model_mode = "audio" if mode == "audio-only" and "text" in self.model.inputs else "both"
            with torch.inference_mode():  # read-only forward: concurrent batches share the weights
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
                    "protocol": instances[i].protocol,
                    "model": self.name,
                    "version": self.version,
                }
                if weights is not None:
                    out[i]["modality_weights"] = {"audio": float(weights[row][0]), "text": float(weights[row][1])}
                if instances[i].mode == "asr-text":
                    out[i]["asr_text"] = instances[i].text
        return out  # type: ignore[return-value]

    def _parse_and_run(self, payload: Any) -> tuple[list[Instance], bool, list[dict]]:
        instances, is_v2 = self.parse(payload)
        return instances, is_v2, self._run_batch(instances)

    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None):
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self.config.fast_path and self.batcher.idle():
            # nothing else in flight: decode and run in one hop to the model thread
            instances, is_v2, results = await self.batcher.run_alone(self._parse_and_run, payload)
        else:
            self.batcher.incoming += 1  # lets the batcher wait for this request while it is decoded
            try:
                instances, is_v2 = await loop.run_in_executor(self._prep_pool, self.parse, payload)
            finally:
                self.batcher.incoming -= 1
            results = await self.batcher.submit(instances)
        if self.metrics is not None:
            for res in results:
                self.metrics.observe(self.name, self.version, res["label"], max(res["probabilities"].values()), res["mode"])
        if PROTOCOL_COUNT is not None:
            for res in results:
                PROTOCOL_COUNT.labels(self.name, res["protocol"]).inc()
        if not is_v2:
            return {"predictions": results, "model_name": self.name, "model_version": self.version}
        probs = np.array([[r["probabilities"][lab] for lab in self.labels] for r in results], dtype=np.float32)
        outputs = [
            InferOutput("label", [len(results)], "BYTES", [r["label"] for r in results]),
            InferOutput("probabilities", list(probs.shape), "FP32", probs.flatten().tolist(),
                        parameters={"emotions": ",".join(self.labels)}),
            InferOutput("mode", [len(results)], "BYTES", [r["mode"] for r in results]),
            InferOutput("protocol", [len(results)], "BYTES", [r["protocol"] for r in results]),
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
    parser.add_argument("--max_instances", type=int, default=ServingConfig.max_instances)
    parser.add_argument("--torch_threads", type=int, default=default_torch_threads(),
                        help="intra-op threads for CPU inference (default: half the cores)")
    parser.add_argument("--model_workers", type=int, default=ServingConfig.model_workers,
                        help="batches run concurrently (CPU: cores / torch_threads is a good value)")
    parser.add_argument("--prep_threads", type=int, default=ServingConfig.prep_threads,
                        help="threads decoding audio and computing features")
    parser.add_argument("--no_channels_last", action="store_true", help="keep NCHW convolutions on CPU")
    parser.add_argument("--malloc_arenas", type=int, default=2,
                        help="glibc malloc arenas (0: leave glibc's default of 8 per core)")
    parser.add_argument("--log_requests", action="store_true",
                        help="log every request (uvicorn access log and KServe timing lines); off by default: "
                             "at hundreds of requests/s the log lines cost more than a tiny model")
    parser.add_argument("--asr_backend", default=ServingConfig.asr_backend,
                        help="ASR for requests without text: none, faster-whisper, pocketsphinx")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speaker_norm", choices=SPEAKER_NORM, default=ServingConfig.speaker_norm,
                        help="speech_emb models: normalise per request speaker (auto: as the model was trained)")
    parser.add_argument("--max_speakers", type=int, default=ServingConfig.max_speakers,
                        help="speakers whose statistics are kept (least recently used evicted first)")
    parser.add_argument("--min_speaker_utterances", type=int, default=ServingConfig.min_speaker_utterances,
                        help="utterances of a speaker before its statistics are used (strict until then)")
    parser.add_argument("--speaker_memory_mb", type=float, default=ServingConfig.speaker_memory_mb,
                        help="memory cap of all speaker statistics")
    return parser


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    return ServingConfig(
        max_request_bytes=args.max_request_bytes, max_audio_seconds=args.max_audio_seconds,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_instances=args.max_instances,
        asr_backend=args.asr_backend, device=args.device, torch_threads=args.torch_threads,
        prep_threads=args.prep_threads, channels_last=not args.no_channels_last, model_workers=args.model_workers,
        speaker_norm=args.speaker_norm, max_speakers=args.max_speakers,
        min_speaker_utterances=args.min_speaker_utterances, speaker_memory_mb=args.speaker_memory_mb,
    )


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc malloc arenas (as MALLOC_ARENA_MAX does): with one arena per busy thread the
    server's resident memory creeps up under sustained concurrent load (fragmentation); with 2 it
    stays flat. No-op where MALLOC_ARENA_MAX is set or glibc is absent; True when applied."""
    if os.environ.get("MALLOC_ARENA_MAX") or arenas <= 0:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    from emoflow.monitoring.metrics import default_metrics
    from emoflow.serving.server import serve

    args, _ = build_parser().parse_known_args(argv)
    limit_malloc_arenas(args.malloc_arenas)  # before any worker thread allocates
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    model = EmotionPredictor(args.model_name, args.storage_uri, store=args.store, config=config,
                             metrics=default_metrics())
    serve(model, host=args.host, port=args.http_port, log_requests=args.log_requests)


if __name__ == "__main__":
    main()
