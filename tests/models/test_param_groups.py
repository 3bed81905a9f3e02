"""Per-module parameter groups from presets (train.param_groups), for every architecture, and the
A1 paper preset as the paper describes it (BERT's own learning rate, whole dialogues per batch,
BN + ReLU after every convolution, the FC after the Bi-GRU mapping to the classes)."""

from __future__ import annotations

import copy

import pytest
import torch

from emoflow.models import build_model, discover, list_presets, load_preset
from emoflow.models.registry import offline_preset

MELD = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def meta_model(arch, name, labels=MELD):
    """A shipped preset built offline on the meta device (no weights, no download)."""
    with torch.device("meta"):
        return build_model(arch, offline_preset(load_preset(arch, name)), labels)


@pytest.mark.parametrize("arch,name", [(a, n) for a, n in list_presets() if a in discover()])
def test_every_shipped_preset_has_valid_param_groups(arch, name):
    model = meta_model(arch, name)
    groups = model.param_groups()
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter in exactly one group
    for g in groups:
        assert g["optimizer"] in ("adam", "adamw", "sgd") and g["lr"] >= 0 and g["weight_decay"] >= 0


def test_a1_paper_preset_gives_bert_its_own_learning_rate():
    from emoflow.training.trainer import make_optimizers

    preset = load_preset("a1", "paper")
    model = meta_model("a1", "paper")
    bert_lr = preset["train"]["param_groups"]["text_encoder"]["lr"]
    assert bert_lr == 2.0e-5 and preset["train"]["lr"] == 5.0e-4
    (opt,) = make_optimizers(model)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    bert = {id(p) for p in model.text_encoder.parameters()}
    assert bert and all(lr_of[i] == bert_lr for i in bert)
    rest = [id(p) for p in model.parameters() if id(p) not in bert]
    assert rest and all(lr_of[i] == 5.0e-4 for i in rest)
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(wd_of[i] == 0.0 for i in bert) and all(wd_of[i] == 1.0e-4 for i in rest)


def test_a1_paper_preset_batches_by_dialogue():
    from emoflow.training.trainer import TrainConfig

    assert TrainConfig.from_preset(load_preset("a1", "paper")).batch_by == "dialogue"


@pytest.mark.parametrize("labels", [MELD[:4], MELD, MELD[:6]])
def test_a1_paper_fc_after_the_gru_maps_to_the_classes(labels):
    model = meta_model("a1", "paper", labels)
    assert model.text_out.out_features == len(labels)


def test_a1_paper_bn_and_relu_after_every_convolution(mh):
    model = meta_model("a1", "paper")
    assert model.speech.parallel_bn is not None and model.speech.parallel_bn.num_features == 16
    assert len(model.speech.bns) == len(model.speech.convs) == 4
    # on the tiny preset (same structure): what conv 1 sees is ReLU(BN(parallel convs)) on real frames
    tiny = mh.build_tiny("a1").train()
    assert tiny.speech.parallel_bn is not None
    seen = {}
    tiny.speech.parallel_bn.register_forward_hook(lambda m, i, o: seen.__setitem__("bn", o.detach()))
    tiny.speech.convs[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("conv1", i[0].detach()))
    batch = mh.make_batch(tiny, lengths=(60, 60, 60))
    tiny(batch)
    bn = seen["bn"]
    torch.testing.assert_close(bn.mean(dim=(0, 2, 3)), torch.zeros(bn.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(seen["conv1"], torch.relu(bn))


def test_param_groups_patterns_freeze_and_errors(mh):
    base = load_preset("a1", "tiny")

    def groups_of(spec, **train):
        p = copy.deepcopy(base)
        p["train"].update(train, param_groups=spec)
        torch.manual_seed(0)
        m = build_model("a1", p, mh.LABELS)
        return m, {g["name"]: g for g in m.param_groups()}

    model, groups = groups_of({
        "top_layer": {"params": "text_encoder.encoder.layer.1.*", "lr": 1e-4},
        "bert": {"params": "text_encoder", "lr": 1e-5, "weight_decay": 0},
        "gru": {"params": ["gru", "text_fc"], "optimizer": "sgd", "momentum": 0.5},
        "speech": {"freeze": True},
    }, lr=3e-3, weight_decay=1e-4)
    top = {id(p) for p in model.text_encoder.encoder.layer[1].parameters()}
    assert {id(p) for p in groups["top_layer"]["params"]} == top  # the first matching group wins
    assert not top & {id(p) for p in groups["bert"]["params"]}
    assert groups["bert"]["lr"] == 1e-5 and groups["bert"]["weight_decay"] == 0.0
    assert groups["gru"]["optimizer"] == "sgd" and groups["gru"]["momentum"] == 0.5 and groups["gru"]["lr"] == 3e-3
    assert "speech" not in groups and not any(p.requires_grad for p in model.speech.parameters())
    assert groups["rest"]["lr"] == 3e-3 and groups["rest"]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match=r"param_groups.x: \['nothing.here'\] match no parameter"):
        groups_of({"x": {"params": "nothing.here"}})
    with pytest.raises(ValueError, match=r"param_groups.bert has unknown keys \['learning_rate'\]"):
        groups_of({"bert": {"params": "text_encoder", "learning_rate": 1}})
    p = copy.deepcopy(base)
    p["train"]["groups"] = {"text_encoder": {"lr": 1e-5}}
    with pytest.raises(ValueError, match="train.groups is now train.param_groups"):
        build_model("a1", p, mh.LABELS).param_groups()


@pytest.mark.parametrize("arch,name", [(a, n) for a, n in list_presets() if a in discover()
                                       and (n == "paper" or n.startswith("paper-"))])
def test_every_key_of_every_paper_preset_has_a_source_or_choice(arch, name):
    from emoflow.models.registry import source_problems

    assert source_problems(load_preset(arch, name)) == []


def test_source_problems_are_named():
    from emoflow.models.registry import source_problems

    preset = {"arch": "x", "name": "paper", "model": {"a": 1, "enc": {"b": 2, "c": 3}}, "train": {"lr": 1},
              "sources": {"model.a": 'paper: "a is one" (2.1)', "model.enc": "choice: defaults",
                          "train.lr": "from the paper", "train.gone": "choice: x"}}
    assert source_problems(preset) == [
        "train.lr: 'from the paper' is neither 'paper: \"<quote>\" (<where>)' nor 'choice: <reason>'",
        "train.gone: annotated but not in the preset"]
    del preset["sources"]["train.lr"]
    assert "train.lr: no source (paper quote or choice)" in source_problems(preset)


def test_a4_paper_variants_mpnet_base_and_frozen_layer_mix(mh):
    full, frozen = load_preset("a4", "paper"), load_preset("a4", "paper-frozen")
    for p in (full, frozen):
        assert p["model"]["text_encoder"]["source"] == "microsoft/mpnet-base"  # the raw pretrained MPNet
    model = meta_model("a4", "paper-frozen")
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not any(p.requires_grad for p in model.speech_encoder.model.parameters())
    assert model.speech_encoder.layer_weights.requires_grad and model.text_layer_weights.requires_grad
    assert model.text_layer_weights.shape == (13,)  # embeddings + 12 layers
    assert all(p.requires_grad for p in meta_model("a4", "paper").text_encoder.parameters())
    # the tiny form of the frozen variant: the mix trains, the frozen encoders stay in eval mode
    p = copy.deepcopy(load_preset("a4", "tiny"))
    p["model"]["text_layers"] = "mix"
    p["model"]["text_encoder"]["freeze"] = True
    p["model"]["speech_encoder"]["layer"] = "weighted"
    p["train"]["param_groups"] = {"speech_frozen": {"params": "speech_encoder.model", "freeze": True}}
    torch.manual_seed(0)
    tiny = build_model("a4", p, mh.LABELS).train()
    assert not tiny.speech_encoder.model.training and tiny.speech_encoder.training and tiny.audio_enc.training
    batch = mh.make_batch(tiny)
    tiny.set_progress(1.0)
    tiny.compute_loss(tiny(batch), batch["labels"]).backward()
    assert tiny.text_layer_weights.grad is not None and tiny.text_layer_weights.grad.abs().sum() > 0
    assert tiny.speech_encoder.layer_weights.grad is not None
    assert all(q.grad is None for q in tiny.text_encoder.parameters())
    names = {g["name"] for g in tiny.param_groups()}
    assert names == {"rest"}


def test_a_model_saved_before_param_groups_still_loads(tmp_path, mh):
    """Saved presets from before this layout (train.groups, no parallel_bn, a numeric out_dim) load
    as they were saved; only training them asks for the new key."""
    from emoflow.models import load_model, save_model

    old = copy.deepcopy(load_preset("a1", "tiny"))
    del old["model"]["speech"]["parallel_bn"]
    old["model"]["text"]["out_dim"] = 16
    old["train"]["groups"] = {"text_encoder": {"lr": 1e-5}, "head": {"lr": 1e-3}}
    torch.manual_seed(0)
    model = build_model("a1", old, mh.LABELS)
    loaded = load_model(save_model(model, tmp_path / "old"))
    assert loaded.speech.parallel_bn is None and loaded.text_out.out_features == 16
    batch = mh.make_batch(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["logits"], model.eval()(batch)["logits"])
    with pytest.raises(ValueError, match="train.groups is now train.param_groups"):
        loaded.param_groups()
