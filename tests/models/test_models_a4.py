"""A4 (MSMSER) specifics: masking schedule, masked modality has no effect, query tokens."""

from __future__ import annotations

import pytest
import torch


def test_masking_schedule():
    from emoflow.models.archs.a4.model import masking_probability

    assert masking_probability(0.0) == pytest.approx(0.8)
    assert masking_probability(0.35) == pytest.approx(0.4)
    assert masking_probability(0.7) == pytest.approx(0.0)
    assert masking_probability(0.9) == 0.0 and masking_probability(1.0) == 0.0
    with pytest.raises(ValueError, match="progress"):
        masking_probability(-0.1)


def test_random_masking_follows_progress(tiny):
    model = tiny("a4")
    model.train()
    torch.manual_seed(0)
    model.set_progress(0.0)
    keep = model._keep({}, 20000, torch.device("cpu"))
    masked = ~keep.all(1)
    assert not (~keep).all(1).any()  # never both
    assert masked.float().mean().item() == pytest.approx(0.8, abs=0.02)
    text_share = (~keep[:, 1]).sum().item() / masked.sum().item()
    assert text_share == pytest.approx(0.6, abs=0.02)
    model.set_progress(0.35)
    assert (~model._keep({}, 20000, torch.device("cpu")).all(1)).float().mean().item() == pytest.approx(0.4, abs=0.02)
    for progress in (0.7, 0.95):
        model.set_progress(progress)
        assert model._keep({}, 5000, torch.device("cpu")).all()
    model.eval()
    model.set_progress(0.0)
    assert model._keep({}, 5000, torch.device("cpu")).all()  # no masking at inference


def test_masked_modality_changes_no_logit(tiny, mh):
    model = tiny("a4")
    batch = mh.make_batch(model)
    batch["modality_keep"] = torch.tensor([[True, False], [False, True], [True, True]])
    with torch.no_grad():
        base = model(batch)
        assert torch.equal(base["modality_keep"], batch["modality_keep"])
        changed = dict(batch)
        changed["input_ids"] = batch["input_ids"].clone()
        changed["input_ids"][0, 1:3] = torch.tensor([3000, 3001])  # sample 0: text masked
        changed["wave"] = batch["wave"].clone()
        changed["wave"][1, :2000] = torch.randn(2000)  # sample 1: audio masked
        after = model(changed)["logits"]
    assert torch.equal(after[0], base["logits"][0])
    assert torch.equal(after[1], base["logits"][1])
    # the same edits move the logits of the unmasked sample
    changed["input_ids"][2, 1:3] = torch.tensor([3000, 3001])
    with torch.no_grad():
        assert not torch.allclose(model(changed)["logits"][2], base["logits"][2])
    # masking text == text-only dropped == audio-only mode for that sample
    with torch.no_grad():
        audio_only = model({k: batch[k] for k in ("wave", "wave_mask")}, mode="audio")["logits"]
    torch.testing.assert_close(audio_only[0], base["logits"][0], atol=1e-5, rtol=1e-4)


def test_modality_keep_validated(tiny, mh):
    model = tiny("a4")
    batch = mh.make_batch(model)
    batch["modality_keep"] = torch.tensor([[False, False], [True, True], [True, True]])
    with pytest.raises(ValueError, match="modality_keep"):
        model(batch)


def test_structure_follows_preset(tiny):
    model = tiny("a4")
    m = model.preset["model"]
    assert model.queries.shape == (m["num_queries"], m["d_e"]) == (30, m["d_e"])
    assert model.audio_enc.layers[0].self_attn.num_heads == 8
    assert model.decoder.layers[0].multihead_attn.num_heads == 8
    assert model.modality_type.num_embeddings == 2
