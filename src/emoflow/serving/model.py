"""The served model: where it comes from (``resolve_model_dir``), loading it (``EmotionModel.load``),
preparing one instance (decode + features, ``prepare``) and running a batch (``run_batch``).

Models on cached encoder embeddings (input ``speech_emb``, the ``offline`` presets) get them online:
load() builds the run's encoders from ``model/feature_config.json`` (same specs, options and seed
as the features step) and each batch runs them on the decoded audio, then assembles and collates
the model inputs as training does. With speaker normalisation (on when the run's feature_config
has ``speaker_norm``; ``--speaker_norm on|off`` forces it), an instance's ``speaker`` adds the
utterance to that speaker's running statistics (SpeakerStats: LRU, ``--max_speakers``,
``--speaker_memory_mb``) and, from ``--min_speaker_utterances`` on, the embeddings are z-normalised
with them (protocol ``speaker-normalised``); otherwise, or without a speaker, the protocol is strict.

Each instance is predicted alone, as its own dialogue: a request carries no dialogue context, so a
model with ``text.context: dialogue`` runs its Bi-GRU over that one utterance.

An instance whose features, embeddings or output probabilities are not finite (e.g. float audio
of amplitude 1e18) gets ``error`` set and no result: the request fails as the client's (400,
naming the instance), its embeddings never enter the speaker statistics.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emoflow.audiofile import AudioError, decode_mono
from emoflow.serving.settings import ServingConfig

log = logging.getLogger("emoflow.serving")

SAMPLE_RATE = 16000
MODES = ("audio+text", "audio-only", "asr-text", "text-only")
# model inputs that carry audio: a model with none of them is served text-only
AUDIO_INPUTS = ("logmel", "wave", "speech_emb")
NOT_FINITE = "is too loud or malformed: the model's {what} for it are not finite numbers"


def resolve_model_dir(storage_uri: str, store_uri: str | None = None) -> tuple[Path, dict]:
    """Return a local folder holding the registered version, and its registry metadata."""
    from emoflow.config import config_hash, home
    from emoflow.registry import Registry
    from emoflow.storage import open_store

    if storage_uri.startswith("registry://"):
        from emoflow.config import store_uri as default_store

        store = store_uri or default_store()
        registry = Registry(open_store(store))
        name, version = registry.resolve(storage_uri[len("registry://"):])
        # keyed by store too: two stores can both hold an "emoflow" v1
        target = home() / "serving-cache" / config_hash(str(store)) / name / version
        if not (target / "manifest.json").exists():
            registry.download(f"{name}@{version}", target)
        return target, {"name": name, "version": version, **registry.show(f"{name}@{version}")}
    if storage_uri.startswith("s3://"):
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
    """One utterance of a request, from parsing to its answer."""
    audio: bytes                   # encoded audio; b"" for text-only models and once decoded
    text: str | None = None
    speaker: str | None = None
    where: str = "instance"        # how error messages name it, e.g. "instances[2]"
    wave: np.ndarray | None = None
    logmel: np.ndarray | None = None
    emb: dict | None = None        # speech_emb models: assembled embedding inputs
    mode: str = "audio+text"
    protocol: str = "strict"
    error: str | None = None       # set when the model cannot answer for it (the client's input)


class InstanceError(ValueError):
    """An instance cannot be prepared (reason is a metrics label; the message names the instance)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _rows(arrays: dict) -> set[str]:
    """Statistics names whose rows each count (frames), as in emoflow.evaluation.normalization."""
    return {k for k in arrays if k.endswith("|frames")}


def _finite(arrays) -> bool:
    return all(np.isfinite(np.asarray(a)).all() for a in arrays)


class EmotionModel:
    """A registered emoflow model loaded for serving (thread-safe: batches may run concurrently)."""

    def __init__(self, config: ServingConfig | None = None):
        self.config = config or ServingConfig()
        self.model = None
        self.version = "unknown"
        self.labels: list[str] = []
        self.feature_config = None
        self.encoders: list = []         # EmbeddingCaches used online (speech_emb models)
        self.speaker_stats = None        # SpeakerStats when speaker normalisation is on
        self.device = None
        self.path: Path | None = None
        self._asr_lock = threading.Lock()       # guards the lazy ASR backend only
        self._asr = None
        self._tokenize_lock = threading.Lock()  # HF fast tokenizers are not safe to call concurrently

    def set_threads(self) -> None:
        """Intra-op threads of the calling thread (a thread-pool initializer)."""
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)

    # -- loading -------------------------------------------------------------------------------
    def load(self, storage_uri: str, store: str | None = None) -> None:
        from emoflow.audio.logmel import LogMelConfig
        from emoflow.models import load_model
        from emoflow.training.multilabel import model_task
        from emoflow.training.trainer import pick_device

        path, meta = resolve_model_dir(storage_uri, store)
        self.set_threads()
        self.device = pick_device(self.config.device)
        model = load_model(path / "model").to(self.device).eval()
        if model_task(model) != "single_label":
            # per-emotion sigmoids: a softmax answer of one emotion and its drift statistics would be
            # wrong; refuse rather than serve wrong probabilities
            raise ValueError(f"{path}: the model is {model_task(model)} (per-emotion probabilities); the "
                             "predictor serves single-label models only")
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
        self.model, self.path = model, path
        # long-lived objects (weights, modules, tokenizer, imports) out of the garbage collector's
        # view: full collections then scan only per-request garbage, which trims latency spikes
        gc.collect()
        gc.freeze()

    @property
    def text_only(self) -> bool:
        """The loaded model takes no audio input (see AUDIO_INPUTS): requests carry text only."""
        return self.model is not None and not set(self.model.inputs) & set(AUDIO_INPUTS)

    @property
    def modality_weights(self) -> bool:
        """Answers carry modality weights (audio, text): A1 models (and their ensembles) give them."""
        return getattr(self.model, "arch", None) == "a1"

    def _load_encoders(self, fc: dict, fc_path: Path) -> None:
        """The run's speech encoders, loaded and frozen, and the speaker statistics when enabled."""
        from emoflow.audio.embeddings import speech_caches
        from emoflow.serving.speaker_stats import SpeakerStats

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
        instance's ``emb`` (the inputs training assembles from the cache) and ``protocol``.
        Instances whose embeddings are not finite get ``error`` and touch no statistics."""
        from emoflow.training.data import assemble_embeddings

        step = max(1, self.config.max_batch_size)
        raw = [[d for s in range(0, len(instances), step) for d in c.embed([x.wave for x in instances[s:s + step]])]
               for c in self.encoders]
        for i, inst in enumerate(instances):
            parts = [(c.key_hash, raw[k][i]) for k, c in enumerate(self.encoders)]
            inst.protocol = "strict"
            if not _finite(a for _, d in parts for a in d.values()):
                inst.error = NOT_FINITE.format(what="speech embeddings")
            elif self.speaker_stats is not None and inst.speaker:
                arrays = self._stat_arrays(parts)
                normed = self.speaker_stats.observe(inst.speaker, arrays, rows=_rows(arrays))
                if normed is not None:
                    parts = [(h, {name: normed[f"{h}|{name}"] for name in d}) for h, d in parts]
                    inst.protocol = "speaker-normalised"
            inst.emb = assemble_embeddings(parts, where=f"instance {i}")
        return [inst.emb for inst in instances]

    # -- one instance ----------------------------------------------------------------------------
    def prepare(self, inst: Instance) -> None:
        """Decode the instance's audio within the limits, compute its features and decide its mode
        (raises InstanceError naming it). Text-only instances need nothing."""
        from emoflow.audio.logmel import logmel

        if inst.mode == "text-only":
            return
        limits = self.config
        try:
            wave = decode_mono(inst.audio, SAMPLE_RATE, limits.decode_limits, name=f"{inst.where}: audio")
        except AudioError as exc:
            raise InstanceError(exc.reason, str(exc)) from None
        seconds = len(wave) / SAMPLE_RATE
        if seconds > limits.max_audio_seconds:
            raise InstanceError("too_long", f"{inst.where}: audio is {seconds:.1f} s, the limit is "
                                            f"{limits.max_audio_seconds} s")
        if seconds < limits.min_audio_seconds:
            raise InstanceError("too_short", f"{inst.where}: audio is {seconds:.3f} s, the minimum is "
                                             f"{limits.min_audio_seconds} s")
        inst.wave = wave
        inst.audio = b""  # the encoded bytes are not needed any more
        if "logmel" in self.model.inputs:
            inst.logmel = logmel(wave, self.feature_config)
            if not np.isfinite(inst.logmel).all():
                raise InstanceError("not_finite", f"{inst.where}: audio {NOT_FINITE.format(what='features')}")
        uses_text = "text" in self.model.inputs
        if not uses_text:
            inst.mode = "audio-only"
        elif inst.text is None:
            if limits.asr_backend != "none":
                inst.text = self._transcribe(wave)
                inst.mode = "asr-text"
            elif "audio" in self.model.modes:
                inst.mode = "audio-only"
            else:
                inst.text, inst.mode = "", "audio+text"

    def _transcribe(self, wave: np.ndarray) -> str:
        from emoflow.text.transcribe import get_backend

        with self._asr_lock:
            if self._asr is None:
                self._asr = get_backend(self.config.asr_backend)
        return self._asr(wave).text

    # -- a batch ---------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> dict:
        with self._tokenize_lock:  # held for the tokenizer call only, never across a batch
            return self.model.tokenize(texts)

    def run_batch(self, instances: list[Instance]) -> list[dict | None]:
        """Answers of prepared instances, in order; None (and ``error`` set) for an instance the
        model cannot answer for (non-finite embeddings or probabilities)."""
        from emoflow.training.data import Item, make_collate

        out: list[dict | None] = [None] * len(instances)
        by_mode: dict[str, list[int]] = {}
        if "speech_emb" in self.model.inputs:
            self.embedding_inputs(instances)
        for i, inst in enumerate(instances):
            if inst.error is None:
                by_mode.setdefault(inst.mode, []).append(i)
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
                inst = instances[i]
                if not np.isfinite(probs[row]).all() or (weights is not None and not np.isfinite(weights[row]).all()):
                    inst.error = NOT_FINITE.format(what="outputs")
                    continue
                out[i] = {
                    "label": self.labels[int(probs[row].argmax())],
                    "probabilities": {lab: round(float(p), 6) for lab, p in zip(self.labels, probs[row])},
                    "mode": mode,
                    "protocol": inst.protocol,
                }
                if weights is not None:
                    out[i]["modality_weights"] = {"audio": float(weights[row][0]), "text": float(weights[row][1])}
                if inst.mode == "asr-text":
                    out[i]["asr_text"] = inst.text
        return out
