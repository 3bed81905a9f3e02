"""Speech encoders (wav2vec2 / HuBERT / WavLM): tiny random configs, masks, layers, folders."""

from __future__ import annotations

import pytest
import torch

TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 4, 4],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "mask_time_prob": 0.0, "layerdrop": 0.0,
}


def _enc(family="wav2vec2", norm="layer", seed=0, **kw):
    from emoflow.audio.encoders import load_speech_encoder

    cfg = dict(TINY, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    if family == "wavlm":
        cfg.update(num_buckets=32, max_bucket_distance=64)
    torch.manual_seed(seed)
    return load_speech_encoder({"source": family, "init": "random", "config": cfg, **kw}).eval()


def _wave(lengths=(8000, 5000, 3000), seed=0):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    mask = torch.arange(S)[None] < torch.tensor(lengths)[:, None]
    wave = torch.where(mask, 0.1 * torch.randn(len(lengths), S, generator=g), 3 * torch.randn(len(lengths), S, generator=g))
    return wave, mask


@pytest.mark.parametrize("family,norm", [("wav2vec2", "group"), ("wav2vec2", "layer"), ("hubert", "group"), ("wavlm", "layer")])
def test_shapes_and_padding_invariance(family, norm):
    enc = _enc(family, norm)
    assert type(enc.model).__name__ == {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel", "wavlm": "WavLMModel"}[family]
    wave, mask = _wave()
    with torch.no_grad():
        h, fm = enc(wave, mask)
        assert h.shape == (3, int(fm.sum(1).max()), 32)
        assert fm.sum(1).tolist() == enc.frame_lengths(mask.sum(1)).tolist()
        assert (h[~fm] == 0).all()
        for i in range(3):
            n = int(mask[i].sum())
            alone, fa = enc(wave[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(alone[0], h[i, : fa.shape[1]], atol=1e-5, rtol=1e-4)


def test_freeze_feature_encoder():
    enc = _enc(freeze_feature_encoder=True)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in enc.model.encoder.parameters())
    assert all(p.requires_grad for p in _enc().model.feature_extractor.parameters())


def test_layer_selection_and_weighted_sum():
    wave, mask = _wave()
    states = []
    with torch.no_grad():
        for layer in (0, 1, 2):
            states.append(_enc(norm="group", layer=layer)(wave, mask)[0])
        last = _enc(norm="group", layer="last")(wave, mask)[0]
        weighted_enc = _enc(norm="group", layer="weighted")
        weighted = weighted_enc(wave, mask)[0]
    assert not torch.allclose(states[0], states[2])
    torch.testing.assert_close(states[2], last)  # post-LN encoder: last hidden state == hidden_states[-1]
    # learned weights start equal: the weighted sum is the mean of all hidden states
    torch.testing.assert_close(weighted, sum(states) / 3, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        weighted_enc.layer_weights.copy_(torch.tensor([0.0, 0.0, 50.0]))
        torch.testing.assert_close(weighted_enc(wave, mask)[0], states[2], atol=1e-5, rtol=1e-4)


def test_errors_are_clear():
    from emoflow.audio.encoders import load_speech_encoder
    from emoflow.text.encoders import EncoderLoadError

    with pytest.raises(EncoderLoadError, match="layers"):
        load_speech_encoder({"source": "wav2vec2", "init": "random", "config": TINY, "layers": 3})
    with pytest.raises(EncoderLoadError, match="layer"):
        _enc(layer=7)
    with pytest.raises(EncoderLoadError, match="without weights"):
        load_speech_encoder({"source": "hubert"})
    with pytest.raises(EncoderLoadError, match="(?s)no-such/speech-model.*s3://"):
        load_speech_encoder({"source": "no-such/speech-model"})
    enc = _enc()
    with pytest.raises(ValueError, match="too short"):
        enc(torch.randn(2, 100), torch.tensor([[True] * 100, [True] * 5 + [False] * 95]))
    with pytest.raises(ValueError, match="wave_mask"):
        enc(torch.randn(1, 100), torch.tensor([[False] * 50 + [True] * 50]))


def test_folder_round_trip(tmp_path):
    from emoflow.audio.encoders import load_speech_encoder

    enc = _enc("hubert", "layer")
    enc.model.save_pretrained(tmp_path / "hub")
    loaded = load_speech_encoder({"source": str(tmp_path / "hub")}).eval()
    wave, mask = _wave()
    with torch.no_grad():
        assert torch.equal(enc(wave, mask)[0], loaded(wave, mask)[0])
