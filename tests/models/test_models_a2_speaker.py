"""A2's speaker-recognition transfer: WeSpeaker-format checkpoints from a folder, file, store
mirror or hub cache, loaded strictly into the paper preset, with the checkpoint's front-end and
activation; linear probing refused on random weights; chunks, augmented copies, two learning rates."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from models.speaker_checkpoints import wespeaker_resnet_state, write_wespeaker_folder

LABELS = ["ang", "hap", "neu", "sad"]
SMALL = {"m_channels": 4, "blocks": (1, 1, 1, 1), "feat_dim": 80, "embed_dim": 16}


def paper_preset(checkpoint=None, **speech):
    """The A2 paper preset with the tiny random text encoder standing in for BERT-base."""
    from emoflow.models import load_preset

    preset = load_preset("a2", "paper")
    preset["model"]["text_encoder"] = load_preset("a2", "tiny")["model"]["text_encoder"]
    preset["model"]["max_length"] = 32
    if checkpoint is None:
        preset["model"]["speech"].pop("checkpoint", None)
    else:
        preset["model"]["speech"]["checkpoint"] = str(checkpoint)
    preset["model"]["speech"].update(speech)
    return preset


def build(preset):
    from emoflow.models import build_model

    torch.manual_seed(0)
    return build_model("a2", preset, LABELS)


@pytest.fixture
def private_home(tmp_path, monkeypatch):
    """$EMOFLOW_HOME in tmp (store downloads land there), sharing the offline assets (tokenizer)."""
    from emoflow.config import assets_dir

    assets = assets_dir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "assets").symlink_to(assets)
    monkeypatch.setenv("EMOFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    state = wespeaker_resnet_state(**SMALL)
    return state, write_wespeaker_folder(tmp_path_factory.mktemp("ws") / "small", state, embed_dim=SMALL["embed_dim"])


def test_paper_recipe_loads_a_wespeaker_resnet34(tmp_path):
    """Done-when of issue 16: the paper preset loads a WeSpeaker-format ResNet34 state dict (full
    size: m_channels 32, 80-dim fbank, 256-d embedding) and its first convolution is the checkpoint's."""
    state = wespeaker_resnet_state()
    folder = write_wespeaker_folder(tmp_path / "voxceleb_resnet34", state)
    model = build(paper_preset(folder))
    net = model.speech.net
    assert torch.equal(net.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])
    assert torch.equal(net.layer4[0].shortcut[1].running_var, state["layer4.0.shortcut.1.running_var"])
    # the front-end follows the checkpoint: 80-dim Kaldi fbank with mean normalisation, on the waveform
    from emoflow.audio.fbank import KaldiFbank

    assert isinstance(model.speech.frontend, KaldiFbank) and model.speech.frontend.n_mels == 80
    assert model.speech.frontend.normalize == "mean" and "wave" in model.inputs and "logmel" not in model.inputs
    # activations as it was trained: ReLU, no PReLU slopes left at their 0.25 init
    assert not any(isinstance(m, nn.PReLU) for m in net.modules())
    # paper §3.2.1: the FC layers are new (transfer: conv), a 512-d embedding layer
    assert net.seg_1.weight.shape == (512, 5120) and not torch.equal(net.seg_1.weight[:256], state["seg_1.weight"])


def test_transfer_all_keeps_the_checkpoint_embedding(small_ckpt):
    state, folder = small_ckpt
    model = build(paper_preset(folder, transfer="all"))
    assert model.speech.net.embed_dim == SMALL["embed_dim"]
    assert torch.equal(model.speech.net.seg_1.weight, state["seg_1.weight"])
    assert model.speech_head[0].in_features == SMALL["embed_dim"]


def test_checkpoint_is_loaded_strictly(tmp_path):
    from emoflow.models.speaker import SpeakerCheckpointError

    state = wespeaker_resnet_state(**SMALL)
    missing = {k: v for k, v in state.items() if k != "layer2.0.shortcut.0.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(SpeakerCheckpointError, match=r"missing \['layer2.0.shortcut.0.weight'\]"):
        build(paper_preset(tmp_path / "missing.pt"))
    torch.save({**state, "layer1.0.extra.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(SpeakerCheckpointError, match=r"unexpected \['layer1.0.extra.weight'\]"):
        build(paper_preset(tmp_path / "extra.pt"))
    bad = dict(state)
    bad["layer1.0.conv2.weight"] = torch.zeros(4, 4, 5, 5)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(SpeakerCheckpointError, match="layer1.0.conv2.weight"):
        build(paper_preset(tmp_path / "shape.pt"))
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SpeakerCheckpointError, match="conv1.weight"):
        build(paper_preset(tmp_path / "other.pt"))


def test_checkpoint_sources_file_wrapped_safetensors_and_store_mirror(tmp_path, small_ckpt, private_home):
    from safetensors.torch import save_file

    state, folder = small_ckpt
    # a training checkpoint: {"state_dict": ...} with DistributedDataParallel's "module." prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pt")
    # a bare weights file in safetensors
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for source in (tmp_path / "ddp.pt", tmp_path / "w.safetensors", f"file://{folder}"):
        model = build(paper_preset(source))
        assert torch.equal(model.speech.net.conv1.weight, state["conv1.weight"]), source
        assert model.speech.frontend.n_mels == 80


def test_hub_id_offline_needs_the_cache(tmp_path, monkeypatch, small_ckpt):
    from emoflow.models.speaker import SpeakerCheckpointError

    state, folder = small_ckpt
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpeakerCheckpointError, match=r"Wespeaker/wespeaker-voxceleb-resnet34.*offline.*local hub cache"):
        build(paper_preset("Wespeaker/wespeaker-voxceleb-resnet34"))
    # a warm cache (the hub's own layout: refs/main -> snapshots/<commit>/files) is used offline
    repo = tmp_path / "hub" / "models--Wespeaker--wespeaker-voxceleb-resnet34"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("avg_model.pt", "config.yaml"):
        (snap / f).write_bytes((folder / f).read_bytes())
    model = build(paper_preset("Wespeaker/wespeaker-voxceleb-resnet34"))
    assert torch.equal(model.speech.net.conv1.weight, state["conv1.weight"])


def test_linear_probe_refuses_random_weights():
    with pytest.raises(ValueError, match="linear_probe.*no model.speech.checkpoint"):
        build(paper_preset(None, mode="linear_probe", base_channels=4, blocks=[1, 1, 1, 1], embed_dim=16))


def test_linear_probe_trains_only_the_fc_layers_two_learning_rates_in_finetune(small_ckpt):
    from emoflow.models import build_optimizers

    _, folder = small_ckpt
    probe = build(paper_preset(folder, mode="linear_probe"))
    net = probe.speech.net
    assert not any(p.requires_grad for p in net.conv_parameters())
    assert all(p.requires_grad for p in net.seg_1.parameters())
    groups = {g["name"]: g for g in probe.param_groups()}
    assert set(groups) == {"speech_fc", "text"} and groups["speech_fc"]["lr"] == 0.1
    probe.train()
    assert not net.layer1.training and net.seg_1.training  # frozen BatchNorm statistics stay fixed
    fine = build(paper_preset(folder))
    groups = {g["name"]: g for g in fine.param_groups()}
    # paper §4.2.1: new FC layers at 10^-1, convolutions fine-tuned at 10^-3 (SGD, momentum 0.9)
    assert groups["speech_fc"]["lr"] == 0.1 and groups["speech_backbone"]["lr"] == 1e-3
    fc = {id(p) for p in list(fine.speech.net.seg_1.parameters()) + list(fine.speech_head.parameters())}
    assert {id(p) for p in groups["speech_fc"]["params"]} == fc
    assert {id(p) for p in groups["speech_backbone"]["params"]} == {id(p) for p in fine.speech.net.conv_parameters()}
    sgd = [o for o in build_optimizers(fine) if isinstance(o, torch.optim.SGD)]
    assert sorted(g["lr"] for o in sgd for g in o.param_groups) == [1e-3, 0.1]
    assert all(g["momentum"] == 0.9 for o in sgd for g in o.param_groups)


def test_training_chunks_and_two_augmented_copies(small_ckpt):
    _, folder = small_ckpt
    model = build(paper_preset(folder))
    assert model.speech.chunk_frames == [150, 200, 250, 300] and model.speech.copies == 2
    texts = ["hello there", "what a day", "no"]
    wave = torch.randn(3, 16000 * 4) * 0.1
    mask = torch.ones_like(wave, dtype=torch.bool)
    mask[2, 16000:] = False  # 1 s: shorter than every chunk, tiled
    batch = {"wave": wave, "wave_mask": mask, **model.tokenize(texts), "labels": torch.tensor([0, 1, 2])}
    seen = []
    original = model.speech.net.forward

    def spy(feats, m):
        seen.append(tuple(feats.shape))
        return original(feats, m)

    model.speech.net.forward = spy
    model.train()
    torch.manual_seed(3)
    out = model(batch)
    assert out["audio_logits"].shape == (9, 4) and out["logits"].shape == (3, 4)  # B x (1 + 2 copies)
    assert seen[-1][0] == 9 and seen[-1][1] in (150, 200, 250, 300) and seen[-1][2] == 80
    loss = model.compute_loss(out, batch["labels"])
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out["audio_logits"].shape == (3, 4) and seen[-1] == (3, 398, 80)  # whole segments at evaluation


def test_saved_model_is_rebuilt_without_the_checkpoint(tmp_path):
    from emoflow.models import load_model, save_model

    state = wespeaker_resnet_state(**SMALL)
    folder = write_wespeaker_folder(tmp_path / "ckpt", state, embed_dim=SMALL["embed_dim"])
    model = build(paper_preset(folder))
    save_model(model, tmp_path / "m")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded.speech.net.conv1.weight, state["conv1.weight"])
    assert loaded.preset["model"]["speech"]["checkpoint_loaded"] == str(folder)
    assert "checkpoint" not in loaded.preset["model"]["speech"]


def test_prelu_checkpoint_keeps_its_slopes(tmp_path):
    from emoflow.models.speaker import SpeakerNetConfig, SpeakerResNet
    from emoflow.models.speaker_checkpoint import save_speaker_checkpoint

    torch.manual_seed(1)
    cfg = SpeakerNetConfig(n_mels=40, base_channels=4, blocks=(1, 1, 1, 1), embed_dim=16, activation="prelu",
                           frontend={"kind": "fbank", "n_mels": 40, "normalize": "meanvar"})
    donor = SpeakerResNet(cfg)
    with torch.no_grad():
        for m in donor.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.01, 0.1)
    save_speaker_checkpoint(donor, tmp_path / "own")
    model = build(paper_preset(tmp_path / "own"))
    net = model.speech.net
    assert isinstance(net.act1, nn.PReLU) and torch.equal(net.act1.weight, donor.act1.weight)
    assert torch.equal(net.layer2[0].act2.weight, donor.layer2[0].act2.weight)
    assert model.speech.frontend.n_mels == 40 and model.speech.frontend.normalize == "meanvar"


def test_hub_id_from_the_run_asset_mirror(tmp_path, monkeypatch, small_ckpt, private_home):
    """In a pod the hub cache is empty: a hub id comes from <$EMOFLOW_ASSETS_URI>/hub/<id>/ (the
    run's asset mirror, pipeline parameter `assets`)."""
    import huggingface_hub.constants as hc

    state, folder = small_ckpt
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mirror = tmp_path / "mirror"
    target = mirror / "hub" / "Wespeaker" / "wespeaker-voxceleb-resnet34"
    target.mkdir(parents=True)
    for f in ("avg_model.pt", "config.yaml"):
        (target / f).write_bytes((folder / f).read_bytes())
    monkeypatch.setenv("EMOFLOW_ASSETS_URI", f"file://{mirror}")
    model = build(paper_preset("Wespeaker/wespeaker-voxceleb-resnet34"))
    assert torch.equal(model.speech.net.conv1.weight, state["conv1.weight"])
    monkeypatch.setenv("EMOFLOW_ASSETS_URI", f"file://{tmp_path / 'other'}")
    from emoflow.models.speaker import SpeakerCheckpointError

    with pytest.raises(SpeakerCheckpointError, match="not in the asset mirror either"):
        build(paper_preset("Wespeaker/wespeaker-voxceleb-resnet35"))


def test_trains_through_the_trainer(small_ckpt):
    """One epoch of the paper preset (small checkpoint, tiny text encoder) through `fit`: waveforms
    in, chunks and augmented copies in the speech branch, both learning rates stepping."""
    import numpy as np

    from emoflow.training.data import Item, UtteranceDataset
    from emoflow.training.trainer import TrainConfig, fit

    _, folder = small_ckpt
    preset = paper_preset(folder)
    preset["train"].update(epochs=1, batch_size=4)
    model = build(preset)
    rng = np.random.default_rng(0)
    items = [Item(id=f"u{i}", label=i % 4, text=["so angry", "great", "fine", "sad day"][i % 4], dialogue=f"d{i}",
                  wave=(0.1 * rng.standard_normal(int(16000 * rng.uniform(0.8, 2.0)))).astype(np.float32))
             for i in range(8)]
    before = model.speech.net.conv1.weight.detach().clone()
    result = fit(model, UtteranceDataset(items), UtteranceDataset(items[:4]), TrainConfig.from_preset(preset),
                 device=torch.device("cpu"), progress=False)
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["loss"])
    assert not torch.equal(model.speech.net.conv1.weight, before)  # fine-tuned at 10^-3
