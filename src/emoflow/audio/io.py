"""Audio decoding: any file/URI/bytes to a float32 mono waveform at one sample rate.

WAV, FLAC, OGG (and MP3 where libsndfile supports it) decode through soundfile; anything
soundfile refuses (MP3, MP4/M4A audio, video containers) falls back to PyAV. Resampling uses
soxr at high quality (librosa's default ``soxr_hq``), so values match ``librosa.load``.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """An audio source could not be read or decoded; the message names the source."""


def _describe(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def _local_path(source: str | Path) -> Path | None:
    """Local path for a plain path or file:// URI; None for remote URIs (s3://...)."""
    if isinstance(source, Path):
        return source
    if source.startswith("file://"):
        return Path(urlparse(source).path)
    if "://" in source:
        return None
    return Path(source)


def _read_soundfile(src, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(src) as f:
        native = f.samplerate
        first = 0 if start is None else max(0, int(round(start * native)))
        last = f.frames if end is None else min(f.frames, int(round(end * native)))
        if first > 0:
            f.seek(min(first, f.frames))
        n = max(0, last - first)
        data = f.read(frames=n, dtype="float32", always_2d=True)
    return data, native


def _read_av(src) -> tuple[np.ndarray, int]:
    import av

    with av.open(src) as container:
        streams = container.streams.audio
        if not streams:
            raise ValueError("no audio stream")
        stream = streams[0]
        native = stream.codec_context.sample_rate or stream.rate
        resampler = av.AudioResampler(format="fltp", layout=None, rate=native)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())  # [channels, n]
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((0, 1), np.float32), native
    data = np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)
    return data, native


def _decode(source, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """Decode to [n, channels] float32 at the native rate (already cut to start/end)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        opener = lambda: io.BytesIO(raw)  # noqa: E731
    else:
        path = _local_path(source)
        if path is None:  # remote URI: read it whole through the storage layer
            from emoflow.storage import read_uri

            raw = read_uri(str(source))
            opener = lambda: io.BytesIO(raw)  # noqa: E731
        else:
            if not path.is_file():
                raise AudioError(f"audio file not found: {source}")
            opener = lambda: str(path)  # noqa: E731
    try:
        return _read_soundfile(opener(), start, end)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_exc:
        try:
            data, native = _read_av(opener())
        except Exception as av_exc:  # noqa: BLE001  (any decoder failure becomes AudioError)
            raise AudioError(
                f"cannot decode audio {_describe(source)}: soundfile: {sf_exc}; av: {av_exc}"
            ) from av_exc
        first = 0 if start is None else max(0, int(round(start * native)))
        last = len(data) if end is None else min(len(data), int(round(end * native)))
        return data[first:max(first, last)], native


def load_audio(
    source: str | bytes | Path,
    sr: int = 16000,
    start: float | None = None,
    end: float | None = None,
    check_finite: bool = True,
) -> np.ndarray:
    """Decode ``source`` to a float32 mono waveform [S] at ``sr`` Hz.

    ``source`` is a local path, a ``file://`` or ``s3://`` URI, or the encoded bytes.
    ``start``/``end`` (seconds) cut a segment. Channels are averaged (as librosa does);
    other rates are resampled with soxr HQ. Raises AudioError naming the source when it is
    missing, undecodable, empty (or the segment is), or holds NaN/inf samples.
    """
    if start is not None and end is not None and end <= start:
        raise AudioError(f"audio {_describe(source)}: end {end} <= start {start}")
    if start is not None and start < 0:
        raise AudioError(f"audio {_describe(source)}: negative start {start}")
    try:
        data, native = _decode(source, start, end)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001  (storage/OS errors named with the source)
        raise AudioError(f"cannot read audio {_describe(source)}: {exc}") from exc
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if wave.size == 0:
        where = "" if start is None and end is None else f" in segment [{start}, {end}]"
        raise AudioError(f"audio {_describe(source)} has no samples{where}")
    if check_finite and not np.isfinite(wave).all():
        raise AudioError(f"audio {_describe(source)} holds NaN or infinite samples")
    if native != sr:
        wave = soxr.resample(wave, native, sr, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_duration(source: str | Path) -> float:
    """Duration in seconds of a local audio file (header only where soundfile reads it)."""
    try:
        return sf.info(str(source)).duration
    except Exception:  # noqa: BLE001
        return len(load_audio(source, sr=16000)) / 16000.0
