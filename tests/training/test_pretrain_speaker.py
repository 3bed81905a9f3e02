"""`emoflow pretrain-speaker`: speaker classification through the trainer on a small synthetic
speaker set, writing a checkpoint the A2 paper preset loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from emoflow.corpora import Utterance, write_manifest

SR = 16000
TINY = {"model": {"speech": {"n_mels": 40, "base_channels": 4, "blocks": [1, 1, 1, 1], "embed_dim": 16,
                             "frontend": {"kind": "fbank", "n_mels": 40, "normalize": "meanvar"},
                             "chunk_frames": [50, 60], "augment_copies": 1}},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.05}}


def synthetic_speakers(root, speakers=3, per_speaker=5):
    """Speakers as voices of their own pitch and timbre: harmonics of f0 = 110 + 60 k Hz + noise."""
    rng = np.random.default_rng(0)
    utts = []
    for k in range(speakers):
        for i in range(per_speaker):
            seconds = rng.uniform(0.6, 1.0)
            t = np.arange(int(seconds * SR)) / SR
            f0 = 110 + 60 * k + rng.uniform(-5, 5)
            x = sum((0.3 / h) * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6)) for h in range(1, 4 + k))
            x = (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
            name = f"spk{k}_{i}.wav"
            sf.write(root / name, x, SR)
            utts.append(Utterance(id=f"spk{k}_{i}", audio=name, text=None, label=None, speaker=f"spk{k}",
                                  session="s1", corpus="synthetic-speakers"))
    write_manifest(root / "manifest.jsonl", utts)
    return root


def test_pretrain_speaker_writes_a_checkpoint_a2_loads(tmp_path):
    from emoflow.models import build_model, load_preset
    from emoflow.training.speaker import pretrain_speaker, read_corpus, speaker_preset

    corpus = synthetic_speakers(tmp_path)
    utts = read_corpus(corpus)
    assert {u.label for u in utts} == {"spk0", "spk1", "spk2"}
    summary = pretrain_speaker(utts, tmp_path / "ckpt", preset=speaker_preset("wespeaker", TINY), progress=False)
    assert summary["n_speakers"] == 3 and summary["val_utterances"] == 3 and summary["epochs_run"] == 2
    meta = json.loads((tmp_path / "ckpt" / "speaker.json").read_text())
    assert meta["network"]["n_mels"] == 40 and meta["speakers"] == ["spk0", "spk1", "spk2"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ckpt" / "speaker.safetensors"))
    assert saved["projection.weight"].shape == (3, 16) and "conv1.weight" in saved
    # the A2 paper preset (tiny text encoder) loads it: weights, front-end and activation follow it
    preset = load_preset("a2", "paper")
    preset["model"]["text_encoder"] = load_preset("a2", "tiny")["model"]["text_encoder"]
    preset["model"]["speech"]["checkpoint"] = str(tmp_path / "ckpt")
    model = build_model("a2", preset, ["ang", "hap", "neu", "sad"])
    assert torch.equal(model.speech.net.conv1.weight, saved["conv1.weight"])
    assert torch.equal(model.speech.net.layer4[0].bn2.running_mean, saved["layer4.0.bn2.running_mean"])
    assert model.speech.frontend.n_mels == 40 and model.speech.frontend.normalize == "meanvar"
    assert isinstance(model.speech.net.act1, torch.nn.ReLU)


def test_pretrain_speaker_cli(tmp_path, capsys, monkeypatch):
    import yaml

    from emoflow.cli import main

    monkeypatch.setenv("EMOFLOW_HOME", str(tmp_path / "home"))  # the store download lands there

    corpus = synthetic_speakers(tmp_path, speakers=2, per_speaker=4)
    over = {"model": TINY["model"], "train": {**TINY["train"], "epochs": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(over))
    out = f"file://{tmp_path}/store/speaker"
    assert main(["pretrain-speaker", "--corpus", str(corpus), "--out", out, "--recipe", "paper",
                 "--preset", str(tmp_path / "tiny.yaml")]) == 0
    assert "speaker checkpoint" in capsys.readouterr().out
    from emoflow.models.speaker_checkpoint import read_speaker_checkpoint

    ckpt = read_speaker_checkpoint(out)
    assert ckpt.config.activation == "prelu" and ckpt.config.n_mels == 40  # the paper recipe: PReLU
    assert ckpt.ignored == ["projection.bias", "projection.weight"]


def test_pretrain_speaker_bad_input(tmp_path):
    from emoflow.training.speaker import read_corpus, speaker_preset

    with pytest.raises(ValueError, match="unknown speaker pretraining recipe 'nope'"):
        speaker_preset("nope")
    write_manifest(tmp_path / "manifest.jsonl", [Utterance(id="a", audio="a.wav", text=None, label=None, speaker="s",
                                                           session="1", corpus="c")])
    with pytest.raises(ValueError, match="at least 2 speakers"):
        read_corpus(tmp_path)
