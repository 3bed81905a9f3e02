"""Contract tests run on every architecture's tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from emoflow.models import discover

ARCHS = sorted(discover())  # every discovered architecture folder


def test_presets_listed_and_loadable():
    from emoflow.models import list_presets, load_preset

    listed = list_presets()
    for arch in ARCHS:
        for name in ("paper", "tiny"):
            assert (arch, name) in listed
            p = load_preset(arch, name)
            assert p["arch"] == arch and p["name"] == name
            assert set(p["inputs"]) <= {"logmel", "wave", "text"}
            assert {"model", "train"} <= set(p)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_preset("a1", "nope")
    with pytest.raises(KeyError, match="zz"):
        from emoflow.models import build_model

        build_model("zz", {"arch": "zz"}, ["a", "b"])


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_padding_never_changes_outputs(arch, tiny, mh):
    model = tiny(arch)
    batch = mh.make_batch(model)
    assert set(model.inputs) == set(model.preset["inputs"])
    with torch.no_grad():
        out = model(batch)
        assert out["logits"].shape == (3, 4)
        for key in ("audio_logits", "text_logits"):
            if key in out:
                assert out[key].shape == (3, 4)
        for i in range(3):
            alone = model(mh.one(batch, i, model))
            torch.testing.assert_close(alone["logits"], out["logits"][i : i + 1], atol=2e-5, rtol=1e-4)
        # different garbage in the padding: identical outputs
        other = model(mh.make_batch(model, seed=0, garbage=False))
        torch.testing.assert_close(other["logits"], out["logits"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_every_trainable_parameter(arch, tiny, mh):
    model = tiny(arch)
    model.train()
    model.set_progress(1.0)  # A4: modality masking off, both branches used
    torch.manual_seed(1)
    batch = mh.make_batch(model, dialogue=[5, 5, 9])  # A1: a two-utterance dialogue feeds the GRU recurrence
    out = model(batch)
    model.compute_loss(out, batch["labels"]).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic_under_seed(arch, mh):
    a, b = mh.build_tiny(arch, seed=7), mh.build_tiny(arch, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = mh.make_batch(a)
    outs = []
    for m in (a, b):
        m.train()
        m.set_progress(0.1)
        torch.manual_seed(3)
        outs.append(m(batch)["logits"])
    assert torch.equal(outs[0], outs[1])
    c = mh.build_tiny(arch, seed=8)
    assert not all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tiny, mh, tmp_path):
    from emoflow.models import load_model, save_model

    model = tiny(arch)
    batch = mh.make_batch(model)
    with torch.no_grad():
        ref = model(batch)
    save_model(model, tmp_path / "m")
    assert {"model.safetensors", "preset.json", "labels.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert json.loads((tmp_path / "m" / "labels.json").read_text()) == mh.LABELS
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.tokenize(["a quick test"])["input_ids"].tolist() == model.tokenize(["a quick test"])["input_ids"].tolist()
    with torch.no_grad():
        again = loaded(batch)
    for key in ref:
        assert torch.equal(ref[key], again[key]), key


@pytest.mark.parametrize("arch", ARCHS)
def test_audio_only_and_text_only(arch, tiny, mh):
    model = tiny(arch)
    batch = mh.make_batch(model)
    audio_keys = {"logmel", "logmel_mask", "wave", "wave_mask"}
    text_keys = {"input_ids", "attention_mask"}
    with torch.no_grad():
        a = model({k: v for k, v in batch.items() if k not in text_keys}, mode="audio")
        t = model({k: v for k, v in batch.items() if k not in audio_keys}, mode="text")
        both = model(batch)
    assert a["logits"].shape == t["logits"].shape == (3, 4)
    assert not torch.allclose(a["logits"], both["logits"]) and not torch.allclose(t["logits"], both["logits"])
    with pytest.raises(KeyError, match="input_ids"):
        model({k: v for k, v in batch.items() if k not in text_keys}, mode="both")
    with pytest.raises(ValueError, match="mode"):
        model(batch, mode="video")


def test_bad_masks_are_named(tiny, mh):
    model = tiny("a1")
    batch = mh.make_batch(model)
    batch["logmel_mask"] = batch["logmel_mask"].flip(1)
    with pytest.raises(ValueError, match="logmel_mask"):
        model(batch)


def test_paper_parameter_counts_offline():
    from emoflow.models.registry import count_preset

    counts = {a: count_preset(a, "paper") for a in ARCHS}
    bert = 108_891_648  # BERT-base without pooler (109,482,240 with it)
    assert counts["a1"]["encoders"]["text_encoder"] == bert
    assert counts["a2"]["encoders"]["text_encoder"] == 109_482_240
    assert counts["a3"]["encoders"]["speech_encoder"] == pytest.approx(94.4e6, rel=0.01)  # wav2vec2-base
    assert counts["a4"]["encoders"]["speech_encoder"] == pytest.approx(315.4e6, rel=0.01)  # HuBERT-large
    assert counts["a4"]["encoders"]["text_encoder"] == pytest.approx(108.9e6, rel=0.01)  # MPNet-base
    resnet = counts["a2"]["speech_frontend"]
    assert 7.5e6 < resnet < 8.5e6  # ResNet34 with 32 base channels on the 80-dim fbank + 5120->512 embedding
    for c in counts.values():
        assert c["params"] > sum(c["encoders"].values()) and c["reference"]


def test_describe_presets_covers_every_preset():
    from emoflow.models import describe_presets, format_presets, list_presets

    rows = describe_presets()
    assert [(r["arch"], r["preset"]) for r in rows] == list_presets()
    assert all(r["params"] >= r["trainable"] > 0 for r in rows)
    assert "a4" in format_presets(rows)


def test_build_optimizers_follow_param_groups(mh):
    from emoflow.models import build_optimizers

    model = mh.build_tiny("a1")
    opts = build_optimizers(model)
    assert len(opts) == 1 and isinstance(opts[0], torch.optim.Adam)
    n = sum(p.numel() for g in opts[0].param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
