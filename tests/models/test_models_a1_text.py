"""A1 text-only (MELD without media): presets, modes, context on/off, memoised frozen encoder,
class-weighted loss, fine-tuning the top layers, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

LABELS = ["ang", "hap", "neu", "sad"]
TEXTS = ["hello there", "I am so angry right now, leave me alone!", "ok", "what a lovely day it is"]


def text_preset(**text) -> dict:
    """The tiny A1 preset, text only (random-init 2-layer BERT, real WordPiece tokenizer)."""
    from emoflow.models import load_preset

    p = copy.deepcopy(load_preset("a1", "tiny"))
    p["name"] = "tiny-text"
    p["inputs"] = ["text"]
    p.pop("features", None)
    p["model"].pop("speech", None)
    p["model"]["text"].update(text)
    return p


def build(preset, seed=0):
    from emoflow.models import build_model

    torch.manual_seed(seed)
    return build_model("a1", preset, LABELS).eval()


def batch_for(model, texts=TEXTS, dialogue=None):
    batch = {"labels": torch.arange(len(texts)) % len(LABELS), **model.tokenize(list(texts))}
    if dialogue is not None:
        batch["dialogue"] = torch.tensor(dialogue)
    return batch


def test_text_only_builds_without_speech_branch():
    model = build(text_preset())
    assert model.inputs == {"text"} and model.modes == ("both", "text")
    assert model.speech is None and model.proj_speech is None and model.audio_head is None
    assert not any(name.startswith(("speech.", "proj_speech.")) for name, _ in model.named_parameters())
    batch = batch_for(model)
    with torch.no_grad():
        both, text = model(batch), model(batch, mode="text")
    torch.testing.assert_close(both["logits"], text["logits"])  # "both" = the text branch
    assert both["logits"].shape == (4, 4)
    assert both["modality_weights"].tolist() == [[0.0, 1.0]] * 4
    with pytest.raises(ValueError, match="mode 'audio' not supported"):
        model(batch, mode="audio")


def test_text_only_rejects_other_input_sets():
    p = text_preset()
    p["inputs"] = ["logmel"]
    with pytest.raises(ValueError, match=r"inputs must be \[logmel, text\] or \[text\]"):
        build(p)
    with pytest.raises(ValueError, match="context must be one of"):
        build(text_preset(context="window"))


def test_context_none_has_no_gru_and_ignores_dialogues():
    model = build(text_preset(context="none"))
    assert model.gru is None
    with torch.no_grad():
        a = model(batch_for(model, dialogue=[0, 0, 0, 1]))["logits"]
        b = model(batch_for(model))["logits"]
    torch.testing.assert_close(a, b)


def test_dialogue_context_links_utterances_text_only():
    model = build(text_preset(residual=True, norm=True))
    with torch.no_grad():
        together = model(batch_for(model, dialogue=[0, 0, 0, 0]))["logits"]
        alone = model(batch_for(model, dialogue=[0, 1, 2, 3]))["logits"]
    assert not torch.allclose(together, alone)


def test_cached_frozen_encoder_equals_uncached():
    p = text_preset()
    p["model"]["text_encoder"]["freeze"] = True
    plain = build(p)
    pc = copy.deepcopy(p)
    pc["model"]["text"]["cache"] = True
    cached = build(pc)
    cached.load_state_dict(plain.state_dict())
    batch = batch_for(plain, dialogue=[0, 0, 1, 1])
    with torch.no_grad():
        ref = plain(batch)["logits"]
        first = cached(batch)["logits"]
        assert len(cached._text_memo) == 4
        second = cached(batch)["logits"]  # from the memo
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, first)
    # memoised under inference mode, then used in a training step: gradients flow to the head
    with torch.inference_mode():
        cached(batch_for(cached, texts=["a brand new one"]))
    cached.train()
    loss = cached.compute_loss(cached(batch_for(cached, texts=["a brand new one", "ok"])), torch.tensor([0, 1]))
    loss.backward()
    assert cached.text_fc.weight.grad is not None
    assert all(p.grad is None for p in cached.text_encoder.parameters())
    cached.load_state_dict(plain.state_dict())  # new weights: the memo is emptied
    assert cached._text_memo == {}


def test_cache_needs_frozen_encoder_and_is_bounded():
    with pytest.raises(ValueError, match="needs a frozen text encoder"):
        build(text_preset(cache=True))
    p = text_preset(cache=True, cache_size=3)
    p["model"]["text_encoder"]["freeze"] = True
    model = build(p)
    with torch.no_grad():
        model(batch_for(model, texts=TEXTS[:3]))
        assert len(model._text_memo) == 3
        model(batch_for(model, texts=TEXTS[3:]))
    assert len(model._text_memo) == 1


def test_class_weighted_loss():
    model = build(text_preset())
    batch = batch_for(model)
    out = model(batch)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = F.cross_entropy(out["logits"], batch["labels"], weight=w)
    expected = expected + 0.1 * F.cross_entropy(out["text_logits"], batch["labels"], weight=w)  # aux head
    torch.testing.assert_close(model.compute_loss(out, batch["labels"], class_weight=w), expected)
    unweighted = F.cross_entropy(out["logits"], batch["labels"]) + 0.1 * F.cross_entropy(out["text_logits"], batch["labels"])
    torch.testing.assert_close(model.compute_loss(out, batch["labels"]), unweighted)


def test_save_load_text_only(tmp_path):
    from emoflow.models import load_model, save_model

    model = build(text_preset(residual=True, norm=True))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.inputs == {"text"} and loaded.speech is None
    batch = batch_for(model, dialogue=[0, 0, 1, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["logits"], model(batch)["logits"])


def test_trainable_layers_and_param_groups():
    from emoflow.models import build_optimizers

    p = text_preset()
    p["model"]["text_encoder"]["trainable_layers"] = 1
    p["train"]["param_groups"] = {"text_encoder": {"lr": 1e-5}}
    p["train"]["lr"] = 1e-3
    model = build(p)
    enc = model.text_encoder
    assert all(not q.requires_grad for q in enc.embeddings.parameters())
    assert all(not q.requires_grad for q in enc.encoder.layer[0].parameters())
    assert all(q.requires_grad for q in enc.encoder.layer[1].parameters())
    groups = {g["name"]: g for g in model.param_groups()}
    assert set(groups) == {"text_encoder", "rest"}
    assert groups["text_encoder"]["lr"] == 1e-5 and groups["rest"]["lr"] == 1e-3
    assert sum(q.numel() for q in groups["text_encoder"]["params"]) == sum(
        q.numel() for q in enc.encoder.layer[1].parameters())
    assert len(build_optimizers(model)) == 1
    p["model"]["text_encoder"]["trainable_layers"] = 5
    from emoflow.text.encoders import EncoderLoadError

    with pytest.raises(EncoderLoadError, match="the encoder has 2 layers"):
        build(p)


@pytest.mark.parametrize("name", ["meld-text", "meld-text-nocontext", "meld-text-finetune"])
def test_meld_presets_build_offline(name):
    """The shipped MELD presets build (random-init encoder from the offline asset's config, meta device)."""
    from emoflow.models import build_model, load_preset
    from emoflow.models.registry import offline_preset

    preset = load_preset("a1", name)
    assert preset["inputs"] == ["text"] and preset["name"] == name
    with torch.device("meta"):
        model = build_model("a1", offline_preset(preset), LABELS)
    assert model.inputs == {"text"}
    assert (model.gru is None) == (name == "meld-text-nocontext")
    assert preset["train"]["batch_by"] == ("utterance" if name == "meld-text-nocontext" else "dialogue")
    assert preset["train"]["class_weights"] == "inverse_sqrt_frequency"
