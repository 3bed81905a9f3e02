"""Audio loading for features, training and transcription: any file/URI/bytes to a float32 mono
waveform at one sample rate, through the one bounded decoder (``emoflow.audiofile``).

WAV, FLAC, OGG (and MP3 where libsndfile supports it) decode through soundfile; anything
soundfile refuses (MP4/M4A audio, video containers) through PyAV. Resampling uses soxr at high
quality (librosa's default ``soxr_hq``), so values match ``librosa.load``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from emoflow.audiofile import AudioError, DecodeLimits, decode_mono, describe

__all__ = ["AudioError", "load_audio"]


def _local_path(source: str | Path) -> Path | None:
    """Local path for a plain path or file:// URI; None for remote URIs (s3://...)."""
    if isinstance(source, Path):
        return source
    if source.startswith("file://"):
        return Path(urlparse(source).path)
    if "://" in source:
        return None
    return Path(source)


def load_audio(
    source: str | bytes | Path,
    sr: int = 16000,
    start: float | None = None,
    end: float | None = None,
    limits: DecodeLimits = DecodeLimits(),
) -> np.ndarray:
    """Decode ``source`` to a float32 mono waveform [S] at ``sr`` Hz.

    ``source`` is a local path, a ``file://`` or ``s3://`` URI, or the encoded bytes.
    ``start``/``end`` (seconds) cut a segment. Channels are averaged (as librosa does);
    other rates are resampled with soxr HQ. Raises AudioError (with its ``reason``) naming the
    source when it is missing, undecodable, over the `limits`, empty (or the segment is), or
    holds NaN/inf or absurdly loud samples.
    """
    name = describe(source)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        path = _local_path(source)
        if path is None:  # remote URI: read it through the storage layer, bounded like a file
            from emoflow.storage import read_uri

            try:
                source = read_uri(str(source))
            except Exception as exc:  # noqa: BLE001 (storage errors named with the source)
                raise AudioError(f"cannot read audio {name}: {exc}", "missing_file") from exc
        else:
            source = path
    return decode_mono(source, sr, limits, name=name, start=start, end=end)

