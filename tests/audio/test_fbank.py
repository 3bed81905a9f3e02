"""The in-model Kaldi-style fbank (A2's front-end for WeSpeaker checkpoints): frame count with
snipped edges, HTK-mel filters from 20 Hz to Nyquist, mean normalisation over real frames only."""

from __future__ import annotations

import math

import pytest
import torch

from emoflow.audio.fbank import KaldiFbank, kaldi_mel_banks


def test_frames_and_mask_follow_each_clip():
    fb = KaldiFbank()
    wave = torch.randn(3, 16000) * 0.1
    mask = torch.ones_like(wave, dtype=torch.bool)
    mask[1, 8000:] = False
    mask[2, 300:] = False  # shorter than one 25 ms frame: one zero-padded frame
    feats, fmask = fb(wave, mask)
    # Kaldi snip_edges: 1 + (n - 400) // 160 frames of 400 samples every 160
    assert feats.shape == (3, 98, 80) and fmask.sum(1).tolist() == [98, 48, 1]
    assert torch.all(feats[1, 48:] == 0)
    # CMN: zero mean over each clip's real frames
    for i, n in enumerate(fmask.sum(1).tolist()):
        assert feats[i, :n].mean(0).abs().max() < 1e-3
    # a clip's features do not depend on what pads it
    alone, _ = fb(wave[1:2, :8000])
    torch.testing.assert_close(alone[0], feats[1, :48], atol=1e-4, rtol=1e-4)


def test_tone_peaks_in_the_filter_over_its_frequency():
    fb = KaldiFbank(normalize="none")
    t = torch.arange(16000) / 16000
    feats, _ = fb((0.5 * torch.sin(2 * math.pi * 1000 * t)).unsqueeze(0))
    peak = int(feats[0].mean(0).argmax())
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731  HTK mel scale
    lo, hi = mel(20), mel(8000)
    centers = [lo + (k + 1) * (hi - lo) / 81 for k in range(80)]
    assert abs(peak - min(range(80), key=lambda k: abs(centers[k] - mel(1000)))) <= 1
    # the scale of 16-bit samples: log energies of a half-scale tone are large and positive
    assert feats[0, :, peak].mean() > 15


def test_filters_and_bad_settings():
    banks = kaldi_mel_banks(80, 512, 16000, 20.0, 0.0)
    assert banks.shape == (80, 257) and float(banks[:, -1].abs().sum()) == 0.0 and float(banks.max()) <= 1.0
    with pytest.raises(ValueError, match="window"):
        KaldiFbank(window="blackman")
    with pytest.raises(ValueError, match="normalize"):
        KaldiFbank(normalize="global")
    with pytest.raises(ValueError, match="low_freq"):
        KaldiFbank(low_freq=9000)
    assert not KaldiFbank().state_dict()  # no parameters, no persistent buffers


def test_float32_under_autocast():
    fb = KaldiFbank()
    wave = torch.randn(1, 8000) * 0.1
    ref, _ = fb(wave)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got, _ = fb(wave)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)
