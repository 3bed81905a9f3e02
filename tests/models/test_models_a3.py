"""A3 specifics: frozen wav2vec2 feature encoder, weighted layer sum, concatenation fusion."""

from __future__ import annotations

import torch


def test_feature_encoder_frozen_and_layer_weights_trained(tiny, mh):
    model = tiny("a3")
    enc = model.speech_encoder
    assert model.preset["model"]["speech_encoder"]["freeze_feature_encoder"] is True
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert enc.layer == "weighted" and enc.layer_weights.numel() == enc.config.num_hidden_layers + 1
    model.train()
    batch = mh.make_batch(model)
    model.compute_loss(model(batch), batch["labels"]).backward()
    assert enc.layer_weights.grad is not None and enc.layer_weights.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.feature_extractor.parameters())


def test_fusion_is_concatenation_of_pooled_vectors(tiny, mh):
    model = tiny("a3")
    batch = mh.make_batch(model)
    cap = {}
    h = model.classifier.register_forward_hook(lambda m, i, o: cap.update(x=i[0]))
    with torch.no_grad():
        model(batch)
        h.remove()
        frames, fmask = model.speech_encoder(batch["wave"], batch["wave_mask"])
        pooled = (frames * fmask[..., None]).sum(1) / fmask.sum(1, keepdim=True)
        cls = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, 0]
    torch.testing.assert_close(cap["x"], torch.cat([pooled, cls], dim=1))
