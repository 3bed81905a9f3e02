"""Per-utterance validation and the quarantine bookkeeping of the ingest step.

Every candidate utterance an adapter found is checked here, in this order:

========================  ===================================================================
reason                    meaning
========================  ===================================================================
path_escape               audio path is absolute, a URI, has '..', or a symlink leaves the root
missing_file              audio file does not exist
empty_file                audio file has 0 bytes
too_large                 audio file over ``max_file_bytes``
undecodable_audio         neither soundfile nor PyAV can decode it (corrupt, no audio stream)
bad_sample_rate           sample rate outside [min_sample_rate, max_sample_rate]
too_many_channels         more than ``max_channels`` channels
too_long (file)           the file is over ``max_file_duration`` (refused from its header)
empty_audio               decodes to 0 samples
nonfinite_samples         NaN or Inf samples anywhere in the file
bad_amplitude             samples of absurd amplitude (|x| >= 1e6, e.g. a float WAV of 1e18)
bad_segment               start/end not inside the file (segment corpora such as CMU-MOSEI)
too_short / too_long      duration outside [min_duration, max_duration]
silent                    mono mix-down peak below ``silence_dbfs`` (also catches stereo
                          channels that cancel each other)
unknown_label             label not in the corpus label set
duplicate_id              id already used by an earlier utterance
undecodable_text, bad_text  transcript is not UTF-8 / holds control characters
========================  ===================================================================

Adapters add parse-time reasons (``bad_row``, ``bad_filename``, ``missing_text``,
``speaker_mismatch`` ...). Audio goes through the one bounded decoder (``emoflow.audiofile``:
soundfile for WAV/FLAC/MP3/OGG, PyAV for MP4/M4A/AAC/WebM or when soundfile fails), whose reasons
are the audio reasons above; it is only inspected, never resampled here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from emoflow.audiofile import AudioError, DecodeLimits, decode
from emoflow.corpora.base import ItemError, Source, check_text, ext
from emoflow.corpora.record import Utterance


class IngestError(RuntimeError):
    """The corpus failed as a whole (too many bad items, nothing found). Carries the
    summary and quarantine list so callers can show them."""

    def __init__(self, message: str, summary: dict | None = None, quarantine: list | None = None):
        super().__init__(message)
        self.summary = summary or {}
        self.quarantine = quarantine or []


@dataclass(frozen=True)
class ValidationConfig:
    min_duration: float = 0.1
    max_duration: float = 30.0
    silence_dbfs: float = -60.0        # mono peak below this = silent (RAVDESS soft files peak ~ -40)
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    max_channels: int = 8
    segment_tolerance: float = 0.5     # seconds a segment end may pass the file end (then clipped)
    audio_required: bool = True
    max_file_duration: float = 3600.0  # a whole audio file (segment corpora hold many utterances in one)
    max_file_bytes: int = 1 << 30      # encoded size of one audio file


def decode_limits(cfg: ValidationConfig) -> DecodeLimits:
    """The shared decoder's limits for ingest: rate and channels from `cfg`; a whole file (which
    may hold many segments) up to ``max_file_duration``."""
    return DecodeLimits(max_seconds=cfg.max_file_duration, max_encoded_bytes=cfg.max_file_bytes,
                        min_rate=cfg.min_sample_rate, max_rate=cfg.max_sample_rate, max_channels=cfg.max_channels)


@dataclass
class FileCheck:
    rel: str
    data: bytes
    sha256: str
    wave: np.ndarray
    sample_rate: int


class Validator:
    """Checks candidate utterances one by one; keeps only the last decoded file in memory
    (segments of the same file, as in CMU-MOSEI, arrive together)."""

    def __init__(self, src: Source, cfg: ValidationConfig, labels: set[str] | None):
        self.src = src
        self.cfg = cfg
        self.labels = labels
        self.seen: dict[str, str] = {}
        self._last: tuple[str, FileCheck | ItemError] | None = None

    def _file(self, rel: str) -> FileCheck:
        if self._last and self._last[0] == rel:
            cached = self._last[1]
            if isinstance(cached, ItemError):
                raise cached
            return cached
        try:
            result: FileCheck | ItemError = self._load(rel)
        except ItemError as exc:
            result = exc
        self._last = (rel, result)
        if isinstance(result, ItemError):
            raise result
        return result

    def _load(self, rel: str) -> FileCheck:
        cfg = self.cfg
        data = self.src.read_bytes(rel)  # path_escape / missing_file
        try:
            wave, sr = decode(data, decode_limits(cfg), name=rel)
        except AudioError as exc:
            raise ItemError(exc.reason, str(exc)) from None
        return FileCheck(rel, data, hashlib.sha256(data).hexdigest(), wave, sr)

    def validate(self, utt: Utterance) -> tuple[Utterance, FileCheck | None]:
        """Return the utterance (with audio facts in ``extra``) and its file, or raise ItemError."""
        cfg = self.cfg
        if utt.id in self.seen:
            raise ItemError("duplicate_id", f"id {utt.id!r} already used by {self.seen[utt.id]}")
        self.seen[utt.id] = utt.audio or utt.id
        if self.labels is not None and utt.label not in self.labels:
            raise ItemError("unknown_label", f"{utt.id}: label {utt.label!r} not in {sorted(self.labels)}")
        if utt.text is not None:
            check_text(utt.text, utt.id)
        fc = None
        extra = dict(utt.extra)
        if utt.audio is None:
            if cfg.audio_required:
                raise ItemError("missing_file", f"{utt.id}: no audio path")
        else:
            fc = self._file(utt.audio)
            wave, sr = fc.wave, fc.sample_rate
            total = wave.shape[0] / sr
            start, end = utt.start, utt.end
            if start is not None or end is not None:
                s = 0.0 if start is None else float(start)
                e = total if end is None else float(end)
                if s < 0 or e <= s or s >= total or e > total + cfg.segment_tolerance:
                    raise ItemError(
                        "bad_segment",
                        f"{utt.id}: segment [{s:.3f}, {e:.3f}] s not inside {fc.rel} ({total:.3f} s)",
                    )
                if e > total:
                    extra["segment_clipped_end"] = e
                    e = total
                utt = replace(utt, start=s, end=e)
                wave = wave[int(round(s * sr)):int(round(e * sr))]
            dur = wave.shape[0] / sr
            if dur < cfg.min_duration:
                raise ItemError("too_short", f"{utt.id}: {dur:.3f} s < min_duration {cfg.min_duration} s ({fc.rel})")
            if dur > cfg.max_duration:
                raise ItemError("too_long", f"{utt.id}: {dur:.3f} s > max_duration {cfg.max_duration} s ({fc.rel})")
            mono_peak = float(np.max(np.abs(wave.mean(axis=1)))) if wave.size else 0.0
            peak_db = 20 * np.log10(max(mono_peak, 1e-12))
            if peak_db < cfg.silence_dbfs:
                chan_peak = float(np.max(np.abs(wave)))
                why = ""
                if 20 * np.log10(max(chan_peak, 1e-12)) >= cfg.silence_dbfs:
                    why = f" (channels peak at {20 * np.log10(chan_peak):.1f} dBFS but cancel in the mono mix-down)"
                raise ItemError(
                    "silent", f"{utt.id}: mono peak {peak_db:.1f} dBFS < {cfg.silence_dbfs} dBFS{why} ({fc.rel})"
                )
            extra.update(
                sha256=fc.sha256,
                sample_rate=sr,
                channels=int(fc.wave.shape[1]),
                duration=round(dur, 4),
                file_duration=round(total, 4),
                peak_dbfs=round(float(peak_db), 2),
                format=ext(fc.rel),
                source_path=fc.rel,
            )
        return replace(utt, extra=extra), fc


def bad_share_error(corpus: str, n_in: int, quarantine: list[dict], max_bad_share: float) -> str | None:
    """Error text when more than ``max_bad_share`` of the items were quarantined, else None."""
    if n_in == 0 or len(quarantine) / n_in <= max_bad_share:
        return None
    reasons = Counter(q["reason"] for q in quarantine).most_common(5)
    worst = ", ".join(
        f"{r} x{n} (e.g. {next(q['source'] for q in quarantine if q['reason'] == r)}: "
        f"{next(q['detail'] for q in quarantine if q['reason'] == r)})"
        for r, n in reasons
    )
    return (
        f"ingest of corpus {corpus!r} stopped: {len(quarantine)} of {n_in} utterances "
        f"({len(quarantine) / n_in:.0%}) failed validation, more than max_bad_share={max_bad_share:.0%}. "
        f"Worst reasons: {worst}"
    )
