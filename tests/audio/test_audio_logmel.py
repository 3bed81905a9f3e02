"""Log-mel: shape and values against librosa, batching, normalisation, config hashing."""

import dataclasses

import numpy as np
import pytest

from emoflow.audio.logmel import LogMelConfig, logmel, logmel_batch, mel_power_batch


def signal(seconds, seed=0, sr=16000):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def librosa_mel(y, cfg):
    import librosa

    return librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)


def test_defaults_are_the_paper_setting():
    cfg = LogMelConfig()
    assert (cfg.sample_rate, cfg.n_mels, cfg.win_length, cfg.hop_length, cfg.normalize) == (16000, 128, 400, 160, "segment")


def test_values_match_librosa_in_batch():
    cfg = LogMelConfig(normalize="none")
    waves = [signal(1.3, 0), signal(0.7, 1), signal(2.05, 2)]
    mels = mel_power_batch(waves, cfg)
    for w, m in zip(waves, mels):
        ref = librosa_mel(w, cfg)
        assert m.shape == ref.shape == (128, 1 + len(w) // 160)
        assert np.linalg.norm(m - ref) / np.linalg.norm(ref) < 1e-5
    feats = logmel_batch(waves, cfg)
    for w, f in zip(waves, feats):
        ref = np.log(np.maximum(librosa_mel(w, cfg), cfg.log_floor)).T
        assert f.shape == ref.shape and f.dtype == np.float32
        assert np.abs(f - ref).max() < 1e-3


def test_batch_equals_single_clip():
    cfg = LogMelConfig()
    waves = [signal(0.5, 3), signal(1.9, 4)]
    for w, f in zip(waves, logmel_batch(waves, cfg)):
        np.testing.assert_allclose(f, logmel(w, cfg), atol=1e-4)


def test_segment_normalisation():
    f = logmel(signal(1.0), LogMelConfig())
    np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(f.std(axis=0), 1, atol=1e-3)
    raw = logmel(signal(1.0), LogMelConfig(normalize="none"))
    assert abs(raw.mean()) > 1  # raw log power is far from zero mean


def test_log_floor_on_silence():
    cfg = LogMelConfig(normalize="none", log_floor=1e-6)
    f = logmel(np.zeros(1600, np.float32), cfg)
    assert np.all(f == np.float32(np.log(1e-6)))
    # segment normalisation of a constant stays finite
    assert np.isfinite(logmel(np.zeros(1600, np.float32))).all()


def test_config_hash_and_validation():
    base = LogMelConfig()
    assert base.hash() == LogMelConfig().hash()
    seen = {base.hash()}
    for change in [dict(n_mels=64), dict(hop_ms=20), dict(normalize="none"), dict(log_floor=1e-5), dict(fmax=7600.0)]:
        h = dataclasses.replace(base, **change).hash()
        assert h not in seen
        seen.add(h)
    with pytest.raises(ValueError, match="normalize"):
        LogMelConfig(normalize="global")
    with pytest.raises(ValueError, match="n_fft"):
        LogMelConfig(win_ms=50)
    with pytest.raises(ValueError, match="unknown keys"):
        LogMelConfig.from_dict({"n_mel": 64})
    with pytest.raises(ValueError, match="1-D"):
        logmel(np.zeros((2, 100), np.float32))
