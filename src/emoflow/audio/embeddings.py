"""Frozen-encoder embeddings, computed once per utterance and encoder, cached in the store.

    cache = EmbeddingCache(store, {"source": "wavlm", "init": "random", "config": {...}}, kind="speech")
    batch = cache.batch(utterances)   # {"frames" [B,T,H], "frames_mask" [B,T], "pooled" [B,H]}

Layout in the store::

    embeddings/<kind>/<key_hash>/spec.json
    embeddings/<kind>/<key_hash>/<corpus>/<id>-<src8>.safetensors   {"pooled": [H], "frames": [T, H]}

``key_hash`` = config hash of the encoder spec + the input config (sample rate, text
max_length, pooling, frames stored, init seed), so changing any of them computes new
embeddings, and everything else reuses them: a run of 4 architectures x 5 folds forwards
each utterance through the encoder once (``forward_count`` counts utterances forwarded per
``key_hash`` in this process; P2 in benchmarks/bench_encoder_cache.py). The encoder is
loaded lazily (only when something is missing), once per process, in ``eval()`` mode, and
run under ``torch.inference_mode()`` in length-sorted batches, on the GPU when there is one.

Speech (``kind="speech"``) uses ``emoflow.audio.encoders.load_speech_encoder`` on 16 kHz
waveforms (``load_audio``, start/end honoured); frames are the encoder's frame sequence,
pooled is their mean over real frames. Text (``kind="text"``) uses
``emoflow.text.encoders.load_text_encoder`` on ``utt.text``; frames are token states, pooled
is the attention-masked mean (sentence-transformers style). A random ``init`` is seeded
(``seed``, in the hash) so cached and recomputed values agree.

``stats=True`` (in the hash only when set) also stores "std" [H] (frame standard deviation) and,
for encoders exposing every layer (``layer_states``: the "ct2-whisper:..." torch engine),
"layers_mean" / "layers_std" [L, H]; backends with their own utterance vector (``pooled``:
resemblyzer's GE2E embedding) store it as "backend_pooled". Offline backends:
``emoflow.audio.encoders`` ("ct2-whisper:<folder|tiny.en|base>", "resemblyzer").

Online (the predictor): ``speech_caches(feature_config)`` builds the caches of a run with the same
specs, options and seed, ``cache.load()`` loads the encoder and ``cache.embed(waves)`` gives the
dicts the cache would store (``load_encoder`` and ``embed_batch`` are the shared pieces).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from tqdm.auto import tqdm

from emoflow.audio.features import _open, _safe, source_key
from emoflow import work
from emoflow.audio.io import AudioError, load_audio
from emoflow.config import config_hash
from emoflow.corpora.record import Utterance

PREFIX = "embeddings"
KINDS = ("speech", "text")
# embedding options of the features step when feature_config.embedding_options leaves them out
DEFAULT_OPTIONS = {"stats": True, "store_frames": False}

# utterances forwarded through each encoder (by key hash) in this process
FORWARD_COUNTS: Counter = Counter()
_ENCODERS: dict[tuple, tuple] = {}  # (key hash, device) -> (tokenizer, model)
_LOCK = threading.Lock()


class EmbeddingError(RuntimeError):
    """Embedding extraction failed for a named utterance or encoder."""


def forward_count(key_hash: str | None = None) -> int:
    """Utterances forwarded through the encoder ``key_hash`` (all encoders when None)."""
    return FORWARD_COUNTS[key_hash] if key_hash else sum(FORWARD_COUNTS.values())


def load_embedding(store, key: str) -> dict[str, np.ndarray]:
    """Read one stored embedding: {"pooled": [H], "frames": [T, H]} (frames when stored)."""
    return st_load(_open(store).get_bytes(key))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class EmbeddingCache:
    """Embeddings of one frozen encoder for many utterances, computed at most once each."""

    def __init__(self, store, encoder: dict, kind: str = "speech", *, sample_rate: int = 16000,
                 max_length: int = 512, store_frames: bool = True, seed: int = 0, device: str | None = None,
                 batch_size: int = 8, progress: bool | None = None, stats: bool = False, recompute: bool = False):
        if kind not in KINDS:
            raise ValueError(f"embedding kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(encoder, dict) or "source" not in encoder:
            raise ValueError(f"encoder spec must be a dict with a 'source', got {encoder!r}")
        self.store = _open(store)
        self.encoder = dict(encoder)
        self.kind = kind
        self.input_cfg = ({"sample_rate": sample_rate} if kind == "speech" else {"max_length": max_length})
        self.input_cfg.update(pooling="mean", frames=bool(store_frames), seed=seed)
        if stats:  # only when asked, so existing cache keys stay valid
            self.input_cfg["stats"] = True
        self.key_hash = config_hash({"kind": kind, "encoder": self.encoder, "input": self.input_cfg})
        self.device = torch.device(device or default_device())
        self.batch_size = batch_size
        self.progress = progress
        self.recompute = recompute  # compute every utterance again, replacing what is stored
        self._spec_written = False

    # ---- keys -----------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"{PREFIX}/{self.kind}/{self.key_hash}"

    def key(self, utt: Utterance) -> str:
        src = source_key(utt) if self.kind == "speech" else config_hash([utt.text], 8)
        return f"{self.prefix}/{_safe(utt.corpus)}/{_safe(utt.id)}-{src}.safetensors"

    def _has_input(self, utt: Utterance) -> bool:
        return bool(utt.audio) if self.kind == "speech" else bool(utt.text and utt.text.strip())

    # ---- encoder --------------------------------------------------------------------------
    def _model(self):
        slot = (self.key_hash, str(self.device))
        with _LOCK:
            cached = _ENCODERS.get(slot)
            if cached is None:
                cached = load_encoder(self.encoder, self.kind, seed=self.input_cfg["seed"], device=self.device)
                _ENCODERS[slot] = cached
        return cached

    def load(self) -> "EmbeddingCache":
        """Load the encoder now (once per process); EmbeddingError naming the source when it cannot be."""
        try:
            self._model()
        except EmbeddingError:
            raise
        except Exception as exc:  # noqa: BLE001 (missing folders, assets, bad specs: all named)
            raise EmbeddingError(f"{self.kind} encoder {self.encoder.get('source')!r} could not be loaded: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return self

    def embed(self, inputs: list) -> list[dict[str, np.ndarray]]:
        """Embedding dicts of raw inputs (16 kHz waves or texts), in order, exactly as they are
        cached; nothing is read from or written to the store."""
        tokenizer, model = self._model()
        out = embed_batch(tokenizer, model, inputs, self.kind, self.input_cfg, self.device)
        FORWARD_COUNTS[self.key_hash] += len(inputs)
        work.add("encoder_passes", len(inputs))
        return out

    def _forward(self, items: list[tuple[Utterance, object]]) -> list[dict[str, np.ndarray]]:
        return self.embed([x for _, x in items])

    # ---- public ---------------------------------------------------------------------------
    def ensure(self, utterances: list[Utterance], quarantine: list | None = None,
               summary: dict | None = None) -> dict[str, str]:
        """Compute what is missing; return {utterance id: key} for every utterance with input.

        Utterances without input (no audio / no text) are counted in ``summary["no_input"]``.
        A failure raises EmbeddingError naming the utterance, or is appended to ``quarantine``
        ({"id", "corpus", "step": "embeddings", "reason"}) when a list is given.
        """
        ids = [u.id for u in utterances]
        if len(set(ids)) != len(ids):
            raise EmbeddingError(f"duplicate utterance ids: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
        keys, todo, no_input, failed = {}, [], 0, 0
        for u in utterances:
            if not self._has_input(u):
                no_input += 1
                continue
            keys[u.id] = self.key(u)
            if self.recompute or not self.store.exists(keys[u.id]):
                todo.append(u)
        if todo and not self._spec_written:
            self.store.put_bytes(f"{self.prefix}/spec.json", json.dumps(
                {"kind": self.kind, "encoder": self.encoder, "input": self.input_cfg}, sort_keys=True,
                indent=1, default=str).encode())
            self._spec_written = True
        inputs = []
        for u in todo:
            if self.kind == "text":
                inputs.append((u, u.text))
                continue
            try:
                inputs.append((u, load_audio(u.audio, sr=self.input_cfg["sample_rate"], start=u.start, end=u.end)))
            except AudioError as exc:
                failed += 1
                keys.pop(u.id)
                if quarantine is None:
                    raise EmbeddingError(f"embeddings for {u.id!r}: {exc}") from exc
                quarantine.append({"id": u.id, "corpus": u.corpus, "step": "embeddings", "reason": str(exc)})
        # length-sorted batches waste little padding
        inputs.sort(key=lambda it: len(it[1]))
        with tqdm(total=len(inputs), desc=f"{self.kind} embeddings {self.key_hash}", unit="utt", leave=False,
                  disable=(not self.progress) if self.progress is not None else None) as bar:
            for i in range(0, len(inputs), self.batch_size):
                chunk = inputs[i:i + self.batch_size]
                try:
                    results = self._forward(chunk)
                except (ValueError, RuntimeError) as exc:
                    names = [u.id for u, _ in chunk]
                    raise EmbeddingError(f"encoder {self.encoder.get('source')!r} failed on {names}: {exc}") from exc
                for (u, _), d in zip(chunk, results):
                    self.store.put_bytes(keys[u.id], st_save(d))
                bar.update(len(chunk))
        work.reused("embeddings", len(keys) - len(inputs))
        if summary is not None:
            summary.update(total=len(utterances), computed=len(inputs), reused=len(keys) - len(inputs),
                           no_input=no_input, quarantined=failed, key_hash=self.key_hash, prefix=self.prefix)
        return keys

    def get(self, utt: Utterance) -> dict[str, np.ndarray]:
        """{"pooled", "frames"} of one utterance (computed first if missing)."""
        keys = self.ensure([utt])
        if utt.id not in keys:
            raise EmbeddingError(f"utterance {utt.id!r} has no {'audio' if self.kind == 'speech' else 'text'}")
        return load_embedding(self.store, keys[utt.id])

    def batch(self, utterances: list[Utterance]) -> dict[str, torch.Tensor]:
        """Padded tensors for a model batch: frames [B,T,H], frames_mask [B,T] bool, pooled [B,H]."""
        keys = self.ensure(utterances)
        missing = [u.id for u in utterances if u.id not in keys]
        if missing:
            raise EmbeddingError(f"utterances without {self.kind} input: {missing[:5]}")
        loaded = [load_embedding(self.store, keys[u.id]) for u in utterances]
        out = {"pooled": torch.from_numpy(np.stack([d["pooled"] for d in loaded]))}
        if self.input_cfg["frames"]:
            t = max(d["frames"].shape[0] for d in loaded)
            h = loaded[0]["frames"].shape[1]
            frames = torch.zeros(len(loaded), t, h)
            mask = torch.zeros(len(loaded), t, dtype=torch.bool)
            for i, d in enumerate(loaded):
                frames[i, : len(d["frames"])] = torch.from_numpy(d["frames"])
                mask[i, : len(d["frames"])] = True
            out.update(frames=frames, frames_mask=mask)
        return out


def _masked_stats(x: torch.Tensor, mask: torch.Tensor, dim: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Mean and standard deviation of ``x`` over ``dim`` counting only real frames (``mask``)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(1)
    n = m.sum(dim).clamp(min=1)
    mean = (x * m).sum(dim) / n
    var = (((x - mean.unsqueeze(dim)) ** 2) * m).sum(dim) / n
    return {prefix + "mean": mean, prefix + "std": var.clamp(min=0).sqrt()}


def load_encoder(encoder: dict, kind: str = "speech", *, seed: int = 0, device=None) -> tuple:
    """(tokenizer or None, model) of an encoder spec: random inits seeded with ``seed`` (so
    recomputed values match cached ones), eval mode, frozen, on ``device``."""
    work.add("encoder_loads")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "speech":
            from emoflow.audio.encoders import load_speech_encoder

            tokenizer, model = None, load_speech_encoder(encoder)
        else:
            from emoflow.text.encoders import load_text_encoder

            tokenizer, model = load_text_encoder(encoder)
            if tokenizer is None:
                raise EmbeddingError(f"text encoder {encoder.get('source')!r} has no tokenizer")
    return tokenizer, model.eval().requires_grad_(False).to(torch.device(device or default_device()))


def embed_batch(tokenizer, model, inputs: list, kind: str, input_cfg: dict, device=None) -> list[dict[str, np.ndarray]]:
    """One padded forward of a loaded encoder over ``inputs`` (float32 16 kHz waves for speech,
    strings for text): per input {"pooled", "frames" (when input_cfg["frames"]), and with
    input_cfg["stats"] "std", "layers_mean"/"layers_std" or "backend_pooled" where the encoder has them}."""
    device = torch.device(device or default_device())
    extra: dict[str, torch.Tensor] = {}  # per-input extras: layer stats, backend pooled
    with torch.inference_mode():
        if kind == "speech":
            lengths = [len(w) for w in inputs]
            wave = torch.zeros(len(inputs), max(lengths))
            for i, w in enumerate(inputs):
                wave[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
            mask = torch.arange(wave.shape[1])[None, :] < torch.tensor(lengths)[:, None]
            wave, mask = wave.to(device), mask.to(device)
            if input_cfg.get("stats") and hasattr(model, "layer_states"):
                states, fmask = model.layer_states(wave, mask)
                frames = model.combine(states)
                extra.update(_masked_stats(states, fmask[:, None, :], dim=2, prefix="layers_"))
            else:
                frames, fmask = model(wave, mask)
            if hasattr(model, "pooled"):  # backend-specific utterance vector (GE2E)
                extra["backend_pooled"] = model.pooled(wave, mask)
        else:
            enc = tokenizer(list(inputs), padding=True, truncation=True,
                            max_length=input_cfg["max_length"], return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            frames = model(**enc).last_hidden_state
            fmask = enc["attention_mask"].bool()
        m = fmask.unsqueeze(-1).to(frames.dtype)
        pooled = (frames * m).sum(1) / m.sum(1).clamp(min=1)
        if input_cfg.get("stats"):
            extra["std"] = _masked_stats(frames, fmask, dim=1)["std"]
        extra = {k: v.float().cpu().numpy() for k, v in extra.items()}
        frames, pooled, n = frames.float().cpu().numpy(), pooled.float().cpu().numpy(), fmask.sum(1).tolist()
    out = []
    for i in range(len(inputs)):
        d = {"pooled": np.ascontiguousarray(pooled[i])}
        d.update({k: np.ascontiguousarray(v[i]) for k, v in extra.items()})
        if input_cfg["frames"]:
            d["frames"] = np.ascontiguousarray(frames[i, : int(n[i])])
        out.append(d)
    return out


def speech_caches(feature_config: dict, store=None, **overrides) -> list[EmbeddingCache]:
    """The speech EmbeddingCaches a run's feature_config asks for (``encoders``: specs or source
    strings, in order; ``embedding_options``: EmbeddingCache options over the defaults
    ``DEFAULT_OPTIONS``); ``overrides`` (e.g. device) replace options. ``store`` None: online use
    (``embed``) only."""
    options = {**DEFAULT_OPTIONS, **(feature_config.get("embedding_options") or {}), **overrides}
    return [EmbeddingCache(store, {"source": enc} if isinstance(enc, str) else dict(enc), "speech", **options)
            for enc in feature_config.get("encoders") or []]


def compute_embeddings(utterances: list[Utterance], store, encoder: dict, kind: str = "speech", *,
                       quarantine: list | None = None, summary: dict | None = None, **options) -> list[Utterance]:
    """Pipeline-step form: embeddings for all utterances; ``extra["embeddings"][key_hash]`` = key.

    Options are those of EmbeddingCache. Returns new records; quarantined ones are left out
    (and listed in ``quarantine``); utterances without input pass through unchanged.
    """
    return attach_embeddings(utterances, EmbeddingCache(store, encoder, kind, **options), quarantine=quarantine,
                             summary=summary)


def attach_embeddings(utterances: list[Utterance], cache: EmbeddingCache, *, quarantine: list | None = None,
                      summary: dict | None = None) -> list[Utterance]:
    """`compute_embeddings` with a ready EmbeddingCache (e.g. one of `speech_caches`)."""
    keys = cache.ensure(utterances, quarantine=quarantine, summary=summary)
    bad = {q["id"] for q in quarantine or [] if q.get("step") == "embeddings"}
    out = []
    for u in utterances:
        if u.id in bad:
            continue
        if u.id in keys:
            emb = {**u.extra.get("embeddings", {}), cache.key_hash: keys[u.id]}
            u = dataclasses.replace(u, extra={**u.extra, "embeddings": emb})
        out.append(u)
    return out
