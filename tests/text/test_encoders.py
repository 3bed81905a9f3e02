"""Text encoder loading: offline assets, random init, folders, torch fallback, store mirrors, errors."""

from __future__ import annotations

import argparse

import pytest
import torch

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def _tiny_bert():
    from emoflow.text.encoders import load_text_encoder

    torch.manual_seed(0)
    return load_text_encoder({"source": "bert", "init": "random", "config": TINY, "tokenizer": "minilm"})


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_minilm_asset_pretrained():
    from safetensors.torch import load_file

    from emoflow.assets import asset_path
    from emoflow.text.encoders import load_text_encoder

    tok, model = load_text_encoder({"source": "minilm"})
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    weights = load_file(str(asset_path("minilm") / "model.safetensors"))
    key = next(k for k in weights if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(model.embeddings.word_embeddings.weight, weights[key])
    enc = tok(["hello world"], return_tensors="pt")
    assert enc["input_ids"][0].tolist() == [101, 7592, 2088, 102]


def test_mpnet_asset_pretrained():
    from emoflow.text.encoders import load_text_encoder

    tok, model = load_text_encoder({"source": "mpnet"})
    assert type(model).__name__ == "MPNetModel" and model.config.hidden_size == 768
    assert tok("hello world")["input_ids"] == [0, 7596, 2092, 2]
    assert model.encoder.layer[0].attention.attn.q.weight.abs().sum() > 0


def test_random_init_from_family_and_from_asset_config():
    from emoflow.text.encoders import load_text_encoder

    tok, model = _tiny_bert()
    assert model.config.hidden_size == 32 and model.config.vocab_size == 30522 and len(tok) == 30522
    _, again = _tiny_bert()
    assert _same_weights(model, again)  # same seed, same init; no weights read
    _, from_asset = load_text_encoder({"source": "minilm", "init": "random", "config": {"num_hidden_layers": 1}, "tokenizer": False})
    assert from_asset.config.hidden_size == 384 and from_asset.config.num_hidden_layers == 1
    _, mp = load_text_encoder({"source": "mpnet", "init": "random", "config": TINY, "tokenizer": False})
    assert type(mp).__name__ == "MPNetModel" and mp.config.hidden_size == 32


def test_local_folder_safetensors_and_torch_fallback(tmp_path):
    from emoflow.text.encoders import load_text_encoder

    tok, model = _tiny_bert()
    model.save_pretrained(tmp_path / "st")
    tok.save_pretrained(tmp_path / "st")
    assert (tmp_path / "st" / "model.safetensors").exists()
    tok2, loaded = load_text_encoder({"source": str(tmp_path / "st")})
    assert _same_weights(model, loaded) and len(tok2) == len(tok)
    # a folder with only pytorch_model.bin is read with torch.load(weights_only=True)
    (tmp_path / "pt").mkdir()
    model.config.save_pretrained(tmp_path / "pt")
    torch.save(model.state_dict(), tmp_path / "pt" / "pytorch_model.bin")
    _, loaded = load_text_encoder({"source": str(tmp_path / "pt"), "tokenizer": "minilm"})
    assert _same_weights(model, loaded)


def test_offline_hub_id_gives_clear_error():
    from emoflow.text.encoders import EncoderLoadError, load_text_encoder

    with pytest.raises(EncoderLoadError, match=r"(?s)no-such-org/no-such-model.*folder.*s3://"):
        load_text_encoder({"source": "no-such-org/no-such-model"})


def test_bad_specs_are_named(tmp_path):
    from emoflow.text.encoders import EncoderLoadError, load_text_encoder

    with pytest.raises(EncoderLoadError, match="colour"):
        load_text_encoder({"source": "bert", "colour": "red"})
    with pytest.raises(EncoderLoadError, match="init"):
        load_text_encoder({"source": "bert", "init": "warm"})
    with pytest.raises(EncoderLoadError, match="pretrained"):
        load_text_encoder({"source": "bert"})  # a family name has no weights
    with pytest.raises(EncoderLoadError, match="not a folder"):
        load_text_encoder({"source": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match="config.json"):
        load_text_encoder({"source": str(tmp_path / "empty")})
    with pytest.raises(EncoderLoadError, match="tokens"):
        load_text_encoder({"source": "bert", "init": "random", "config": {**TINY, "vocab_size": 100}, "tokenizer": "minilm"})


def test_s3_mirror_folder(s3_store, tmp_path):
    from emoflow.text.encoders import load_text_encoder

    tok, model = _tiny_bert()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for path in sorted((tmp_path / "m").rglob("*")):
        if path.is_file():
            s3_store.put_file(path.relative_to(tmp_path / "m").as_posix(), path)
    uri = s3_store.uri("")
    assert uri.startswith("s3://")
    tok2, loaded = load_text_encoder({"source": uri})
    assert _same_weights(model, loaded)
    assert tok2("good day")["input_ids"] == tok("good day")["input_ids"]


def test_mirror_cli_and_offline_refusal(monkeypatch):
    from emoflow.text.encoders import EncoderLoadError, add_cli, mirror

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["mirror", "org/model", "s3://bucket/models/model"])
    assert (args.hub_id, args.uri) == ("org/model", "s3://bucket/models/model") and callable(args.func)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError, match="org/model"):
        mirror("org/model", "s3://bucket/models/model")


def test_frozen_text_encoder_has_no_trainable_parameters_and_stays_in_eval():
    from torch import nn

    from emoflow.text.encoders import load_text_encoder

    _, enc = load_text_encoder({"source": "minilm", "init": "pretrained", "freeze": True})
    assert not any(p.requires_grad for p in enc.parameters())
    outer = nn.ModuleDict({"enc": enc})
    outer.train()
    assert enc.training is False  # dropout stays off inside a training model
