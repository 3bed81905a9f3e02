"""load_audio: formats, channels, rates, segments, URIs and clear errors on bad input."""

import io

import numpy as np
import pytest
import soundfile as sf

from emoflow.audio.io import AudioError, load_audio


def tone(sr, seconds=1.0, freq=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels == 1:
        return x
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16")])
def test_wav_flac_roundtrip(tmp_path, fmt, subtype):
    x = tone(16000)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() < 1e-3  # 16-bit quantisation at most


def test_stereo_is_averaged_and_441k_resampled(tmp_path):
    x = tone(44100, seconds=2.0, channels=2)
    path = tmp_path / "stereo.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    y = load_audio(str(path), sr=16000)
    assert y.shape == (32000,)
    ref = tone(16000, seconds=2.0) * 0.75  # mean of channel gains 0.5 and 1.0
    assert np.abs(y[200:-200] - ref[200:-200]).max() < 1e-2
    # same as librosa.load (soxr_hq, channel mean)
    import librosa

    lib, _ = librosa.load(path, sr=16000)
    assert np.abs(lib - y).max() < 1e-5


def test_bytes_file_uri_and_segment(tmp_path):
    x = tone(16000, seconds=2.0)
    path = tmp_path / "seg.flac"
    sf.write(path, x, 16000)
    whole = load_audio(path.read_bytes())
    assert whole.shape == (32000,)
    seg = load_audio(path.as_uri(), start=0.5, end=1.25)
    assert seg.shape == (12000,)
    np.testing.assert_allclose(seg, whole[8000:20000])


def test_mp4_aac_through_av():
    av = pytest.importorskip("av")
    x = tone(16000, seconds=1.0)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    y = load_audio(buf.getvalue())
    assert abs(len(y) - 16000) < 3000  # AAC adds priming/padding frames
    assert 0.2 < float(np.sqrt(np.mean(y ** 2))) < 0.5  # a 0.5-amplitude tone has RMS 0.35


def test_missing_file_named(tmp_path):
    with pytest.raises(AudioError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_undecodable_named(tmp_path):
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"RIFF\x00\x00not really audio" * 10)
    with pytest.raises(AudioError, match="garbage.wav"):
        load_audio(bad)


def test_empty_nan_and_bad_segment(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    x = tone(16000)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(nan)
    ok = tmp_path / "ok.wav"
    sf.write(ok, tone(16000), 16000)
    with pytest.raises(AudioError, match="end"):
        load_audio(ok, start=0.8, end=0.2)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(ok, start=5.0, end=6.0)


# -- the one bounded decoder (emoflow.audiofile), shared by ingest, features and serving ---------------
from emoflow.audiofile import DecodeLimits, decode, decode_mono, probe  # noqa: E402


def encoded(x: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_too_long_is_refused_from_the_header_before_any_sample_is_read(monkeypatch):
    ogg = encoded(tone(16000, seconds=10.0), 16000, "OGG", "VORBIS")
    assert probe(ogg).frames == 160000

    def no_reading(*args, **kwargs):
        raise AssertionError("samples were read")

    monkeypatch.setattr(sf.SoundFile, "read", no_reading)
    with pytest.raises(AudioError, match="10.0 s, the limit is 5 s") as exc:
        decode(ogg, DecodeLimits(max_seconds=5), name="clip.ogg")
    assert exc.value.reason == "too_long"
    with pytest.raises(AudioError, match="samples to decode") as exc:
        decode(encoded(tone(16000, channels=2), 16000), DecodeLimits(max_samples=20000))
    assert exc.value.reason == "too_long"


def test_compressed_audio_is_read_in_blocks_and_matches_a_whole_read(monkeypatch):
    import emoflow.audiofile as audiofile

    x = tone(44100, seconds=3.0, channels=2)
    ogg = encoded(x, 44100, "OGG", "VORBIS")
    whole, _ = sf.read(io.BytesIO(ogg), dtype="float32", always_2d=True)
    monkeypatch.setattr(audiofile, "BLOCK_FRAMES", 4096)
    reads = []
    original = sf.SoundFile.read

    def counting(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", counting)
    stereo, sr = decode(ogg)
    mono, _ = decode(ogg, mono=True)
    assert sr == 44100 and stereo.shape == whole.shape and max(reads) == 4096
    np.testing.assert_array_equal(stereo, whole)
    np.testing.assert_allclose(mono, whole.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("value,reason", [(1e18, "bad_amplitude"), (-2e6, "bad_amplitude"),
                                          (np.inf, "nonfinite_samples"), (np.nan, "nonfinite_samples")])
def test_absurd_or_nonfinite_float_samples_are_refused_with_a_reason(value, reason):
    x = np.full(16000, 0.1, np.float32)
    x[12345] = value
    with pytest.raises(AudioError) as exc:
        decode_mono(encoded(x, 16000, subtype="FLOAT"), 16000, name="loud.wav")
    assert exc.value.reason == reason and "loud.wav" in str(exc.value)


def test_limits_on_size_rate_channels_and_clear_messages_without_heap_addresses(tmp_path):
    wav = encoded(tone(16000), 16000)
    cases = [
        (lambda: decode(wav, DecodeLimits(max_encoded_bytes=100)), "too_large"),
        (lambda: decode(wav, DecodeLimits(min_rate=22050)), "bad_sample_rate"),
        (lambda: decode(encoded(tone(16000, channels=4), 16000), DecodeLimits(max_channels=2)), "too_many_channels"),
        (lambda: decode(b""), "empty_file"),
        (lambda: decode(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4), "undecodable_audio"),
        (lambda: decode(tmp_path / "absent.wav"), "missing_file"),
        (lambda: decode(wav, start=0.5, end=0.2), "bad_segment"),
    ]
    for run, reason in cases:
        with pytest.raises(AudioError) as exc:
            run()
        assert exc.value.reason == reason, (reason, exc.value)
        assert " at 0x" not in str(exc.value) and "BytesIO" not in str(exc.value), str(exc.value)
