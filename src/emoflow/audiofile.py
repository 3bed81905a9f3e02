"""The one bounded audio decoder: encoded audio (bytes or a local path) to float32 samples, within
limits checked before the samples are read, with one error type whose ``reason`` names the problem.

Used by ingest validation (``emoflow.corpora.validate``), features and training
(``emoflow.audio.io.load_audio``) and the predictor (``emoflow.serving.model``).

- WAV/FLAC/OGG/MP3 go through soundfile (libsndfile): the header gives rate, channels and frame
  count, so a small file that declares hours of audio is refused before a sample is read; the
  samples are then read in blocks of ``BLOCK_FRAMES`` into one array of the declared size (mixed
  down to mono per block when asked), never a second whole-file buffer.
- Anything soundfile refuses (MP4/M4A/AAC/WebM, or soundfile failing) goes through PyAV, which
  decodes frame by frame and stops as soon as the limit is passed.
- Every block is checked: NaN/Inf samples, and float samples of absurd amplitude (``|x| >=
  max_abs``, e.g. a float WAV holding 1e18) are refused rather than passed on to features and
  models, where they turn into non-finite outputs.

``AudioError.reason`` is one of REASONS; the message names the source (a file name or a caller's
label such as ``instances[2]``, never an object repr with a heap address) and the problem.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK_FRAMES = 1 << 16
# containers soundfile cannot read: straight to PyAV
AV_EXTENSIONS = frozenset({"mp4", "m4a", "aac", "webm", "mkv", "mov"})
REASONS = ("empty_file", "too_large", "undecodable_audio", "bad_sample_rate", "too_many_channels",
           "too_long", "empty_audio", "nonfinite_samples", "bad_amplitude", "bad_segment", "missing_file")
_OBJECT_REPR = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")


class AudioError(ValueError):
    """Audio that cannot be used: ``reason`` (one of REASONS) is a machine-readable code (a
    quarantine reason, a metrics label); the message names the source and the problem."""

    def __init__(self, message: str, reason: str = "undecodable_audio"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may take. Defaults fit offline work (features, ingest); the predictor
    passes its per-instance limits."""
    max_seconds: float = 3600.0          # decoded span (the segment when start/end are given)
    max_encoded_bytes: int = 1 << 30     # encoded input
    max_samples: int = 1 << 28           # decoded values (frames x channels): 1 GiB of float32
    min_rate: int = 1000
    max_rate: int = 384000
    max_channels: int = 16
    max_abs: float = 1e6                 # |sample| at or above this is not audio


@dataclass(frozen=True)
class AudioInfo:
    """What the header says: native rate, channels, frames (None when the container does not say)."""
    rate: int
    channels: int
    frames: int | None
    float_samples: bool = False

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.rate


def describe(source) -> str:
    """How messages name a source: its path, or its size for bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of audio>"
    return str(source)


def _clean(exc: BaseException) -> str:
    """A third-party error message fit to show: object reprs (heap addresses) replaced, capped."""
    text = getattr(exc, "strerror", None) or str(exc)  # PyAV: the reason without errno and file name
    return _OBJECT_REPR.sub("the input", str(text))[:300]


def _extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""


def _opener(source, name: str, limits: DecodeLimits):
    """A callable returning a fresh file object (or path) for the decoders; checks existence and size."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        size = len(data)
        opener = lambda: io.BytesIO(data)  # noqa: E731
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError:
            raise AudioError(f"audio file not found: {name}", "missing_file") from None
        if not path.is_file():
            raise AudioError(f"audio file not found: {name}", "missing_file")
        opener = lambda: str(path)  # noqa: E731
    if size == 0:
        raise AudioError(f"{name}: file is empty (0 bytes)", "empty_file")
    if size > limits.max_encoded_bytes:
        raise AudioError(f"{name}: {size} bytes of encoded audio, the limit is {limits.max_encoded_bytes}",
                         "too_large")
    return opener


def _check_format(info: AudioInfo, name: str, limits: DecodeLimits) -> None:
    if not limits.min_rate <= info.rate <= limits.max_rate:
        raise AudioError(f"{name}: sample rate {info.rate} Hz outside [{limits.min_rate}, {limits.max_rate}]",
                         "bad_sample_rate")
    if not 1 <= info.channels <= limits.max_channels:
        raise AudioError(f"{name}: {info.channels} channels (1 to {limits.max_channels} accepted)",
                         "too_many_channels")


def _span(info: AudioInfo, start: float | None, end: float | None, name: str) -> tuple[int, int | None]:
    """First frame and end frame (None: to the end) of the requested segment."""
    if start is not None and start < 0:
        raise AudioError(f"{name}: negative start {start}", "bad_segment")
    if start is not None and end is not None and end <= start:
        raise AudioError(f"{name}: end {end} <= start {start}", "bad_segment")
    first = 0 if start is None else int(round(start * info.rate))
    last = None if end is None else int(round(end * info.rate))
    if info.frames is not None:
        first = min(first, info.frames)
        last = info.frames if last is None else min(last, info.frames)
    return first, last


def _frame_limit(info: AudioInfo, limits: DecodeLimits) -> int:
    """Most frames one decode may produce (duration and sample-count limits)."""
    return min(int(limits.max_seconds * info.rate), limits.max_samples // max(1, info.channels))


def _too_long(name: str, frames: int, info: AudioInfo, limits: DecodeLimits) -> AudioError:
    seconds = frames / info.rate
    if frames * info.channels > limits.max_samples:
        return AudioError(f"{name}: {frames * info.channels} samples to decode, the limit is {limits.max_samples}",
                          "too_long")
    return AudioError(f"{name}: audio is {seconds:.1f} s, the limit is {limits.max_seconds:g} s", "too_long")


class _Sink:
    """Decoded blocks into one growing array (mono or [n, channels]), checked block by block."""

    def __init__(self, info: AudioInfo, expected: int | None, limit: int, mono: bool, name: str,
                 limits: DecodeLimits):
        self.info, self.limit, self.mono, self.name, self.limits = info, limit, mono, name, limits
        shape = (expected or min(limit, BLOCK_FRAMES),) + (() if mono else (info.channels,))
        self.out = np.empty(shape, np.float32)
        self.n = 0

    def add(self, block: np.ndarray) -> None:
        """`block` is [frames, channels] float32."""
        if not np.isfinite(block).all():
            bad = int(block.size - np.count_nonzero(np.isfinite(block)))
            raise AudioError(f"{self.name}: {bad} NaN/Inf samples (near {self.n / self.info.rate:.2f} s)",
                             "nonfinite_samples")
        peak = float(np.abs(block).max()) if block.size else 0.0
        if peak >= self.limits.max_abs:
            raise AudioError(f"{self.name}: samples reach {peak:.3g} (near {self.n / self.info.rate:.2f} s); "
                             f"audio must lie within +-1 (anything at or above {self.limits.max_abs:g} "
                             f"is refused)", "bad_amplitude")
        if block.shape[1] != self.info.channels:  # a decoder changing layout mid-stream
            raise AudioError(f"{self.name}: channel count changed while decoding", "undecodable_audio")
        frames = block.shape[0]
        if self.n + frames > self.limit:
            raise _too_long(self.name, self.n + frames, self.info, self.limits)
        if self.n + frames > self.out.shape[0]:  # the header under-declared (or said nothing): grow
            grown = np.empty((min(self.limit, max(2 * self.out.shape[0], self.n + frames)),)
                             + self.out.shape[1:], np.float32)
            grown[:self.n] = self.out[:self.n]
            self.out = grown
        target = self.out[self.n:self.n + frames]
        if self.mono:
            if block.shape[1] == 1:
                target[:] = block[:, 0]
            else:
                np.mean(block, axis=1, dtype=np.float32, out=target)
        else:
            target[:] = block
        self.n += frames

    def result(self) -> np.ndarray:
        if self.n == 0:
            raise AudioError(f"{self.name}: no samples to decode (0 frames)", "empty_audio")
        return self.out[:self.n]


def _soundfile(opener, name: str, limits: DecodeLimits, start, end, mono: bool, header_only: bool):
    import soundfile as sf

    with sf.SoundFile(opener()) as f:
        info = AudioInfo(int(f.samplerate), int(f.channels), int(f.frames),
                         float_samples=str(f.subtype).upper() in ("FLOAT", "DOUBLE"))
        _check_format(info, name, limits)
        first, last = _span(info, start, end, name)
        want = max(0, last - first)
        limit = _frame_limit(info, limits)
        if want > limit:
            raise _too_long(name, want, info, limits)
        if header_only:
            return info, None
        if first:
            f.seek(first)
        sink = _Sink(info, want, limit, mono, name, limits)
        left = want
        while left > 0:
            block = f.read(frames=min(BLOCK_FRAMES, left), dtype="float32", always_2d=True)
            if not len(block):
                break
            sink.add(block)
            left -= len(block)
    return info, sink.result()


def _av(opener, name: str, limits: DecodeLimits, start, end, mono: bool, header_only: bool):
    import av

    with av.open(opener()) as container:
        if not container.streams.audio:
            raise AudioError(f"{name}: no audio stream", "undecodable_audio")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 1)
        frames = None
        if stream.duration is not None and stream.time_base is not None:
            frames = int(stream.duration * stream.time_base * rate)
        elif container.duration is not None:
            frames = int(container.duration / 1_000_000 * rate)
        info = AudioInfo(rate, channels, frames)
        _check_format(info, name, limits)
        first, last = _span(AudioInfo(rate, channels, None), start, end, name)
        limit = _frame_limit(info, limits)
        declared = (frames if last is None else min(frames, last)) - first if frames is not None else None
        if declared is not None and declared > limit:
            raise _too_long(name, declared, info, limits)
        if header_only:
            return info, None
        resampler = av.AudioResampler(format="fltp", layout=None, rate=rate)
        sink = _Sink(info, None, limit, mono, name, limits)
        pos = 0  # frames decoded from the file start

        def take(block: np.ndarray) -> bool:  # [channels, n] from PyAV; False once past the end
            nonlocal pos
            lo, hi = max(first - pos, 0), block.shape[1] if last is None else min(block.shape[1], last - pos)
            pos += block.shape[1]
            if hi > lo:
                sink.add(np.ascontiguousarray(block[:, lo:hi].T, dtype=np.float32))
            return last is None or pos < last

        going = True
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                going = take(out.to_ndarray()) and going
            if not going:
                break
            if pos - first > limit:
                raise _too_long(name, pos - first, info, limits)
        if going:
            for out in resampler.resample(None):
                take(out.to_ndarray())
    return info, sink.result()


def _run(source, limits: DecodeLimits, name: str | None, start, end, mono: bool, header_only: bool):
    name = name or describe(source)
    opener = _opener(source, name, limits)
    errors = []
    if _extension(name if not isinstance(source, (str, Path)) else str(source)) not in AV_EXTENSIONS:
        try:
            return _soundfile(opener, name, limits, start, end, mono, header_only)
        except AudioError:
            raise
        except Exception as exc:  # noqa: BLE001 (libsndfile raises several types on garbage)
            errors.append(f"soundfile: {_clean(exc)}")
    try:
        return _av(opener, name, limits, start, end, mono, header_only)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 (FFmpeg raises many types on garbage input)
        errors.append(f"av: {_clean(exc)}")
    raise AudioError(f"{name}: could not be decoded as audio ({'; '.join(errors)})", "undecodable_audio")


def probe(source, limits: DecodeLimits = DecodeLimits(), *, name: str | None = None,
          start: float | None = None, end: float | None = None) -> AudioInfo:
    """The header's facts, checked against `limits` (size, rate, channels, declared duration);
    reads no samples where the format declares its length. Raises AudioError."""
    return _run(source, limits, name, start, end, mono=True, header_only=True)[0]


def decode(source, limits: DecodeLimits = DecodeLimits(), *, name: str | None = None,
           start: float | None = None, end: float | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """Decode `source` (encoded bytes or a local path) to float32 at its own rate: [frames,
    channels], or [frames] averaged over channels when `mono`; `start`/`end` (seconds) cut a
    segment. Returns (samples, rate). Raises AudioError (see REASONS) naming `name` (default: the
    path, or the byte count)."""
    info, samples = _run(source, limits, name, start, end, mono=mono, header_only=False)
    return samples, info.rate


def decode_mono(source, sr: int, limits: DecodeLimits = DecodeLimits(), *, name: str | None = None,
                start: float | None = None, end: float | None = None) -> np.ndarray:
    """Decode to float32 mono at `sr` Hz: channels averaged (as librosa does), other rates
    resampled with soxr HQ (librosa's default ``soxr_hq``)."""
    wave, native = decode(source, limits, name=name, start=start, end=end, mono=True)
    if native != sr:
        import soxr

        wave = soxr.resample(wave, native, sr, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)
