"""Bounded audio decoding for the predictor: encoded bytes to 16 kHz mono float32, refusing
anything longer than the limit before its samples are read. (To be replaced by the one bounded
decoder shared with ingest validation and features.)"""

from __future__ import annotations

import io

import numpy as np

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

