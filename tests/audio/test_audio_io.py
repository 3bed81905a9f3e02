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
