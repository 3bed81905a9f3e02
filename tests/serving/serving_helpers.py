"""Shared helpers for serving tests: a registered tiny model and audio payloads."""

import base64
import io
import socket
from contextlib import contextmanager

import numpy as np
import soundfile as sf

from emoflow.models import build_model, load_preset, save_model
from emoflow.registry import Registry
from emoflow.storage import open_store

LABELS = ["angry", "happy", "neutral", "sad"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(seconds: float = 1.0, sr: int = 16000, fmt: str = "WAV", seed: int = 0, subtype: str | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.normal(size=t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def register_tiny_model(store_dir, name: str = "emoflow", arch: str = "a1") -> str:
    """A randomly initialised tiny model registered as production; returns the store URI."""
    preset = load_preset(arch, "tiny")
    model = build_model(arch, preset, LABELS)
    out = store_dir / "model-src"
    save_model(model, out / "model")
    (out / "model" / "feature_config.json").write_text('{"n_mels": %d}' % preset["features"]["logmel"]["n_mels"])
    files = {f"model/{p.name}": p for p in (out / "model").iterdir()}
    files["reference_distribution.json"] = b'{"angry": 0.25, "happy": 0.25, "neutral": 0.25, "sad": 0.25}'
    store_uri = str(store_dir / "store")
    registry = Registry(open_store(store_uri))
    version = registry.register(name, files, {"arch": arch, "metric_value": 0.25})
    registry.promote(name, version, "production")
    return store_uri


@contextmanager
def tiny_server(root, *extra_args: str):
    """The predictor serving a registered tiny model on 127.0.0.1 (a separate process, as
    deployed); yields (base URL, port) and stops it afterwards."""
    from emoflow.serving.local import start_local_server, stop_local_server

    store = register_tiny_model(root)
    port = free_port()
    url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port, extra_args=list(extra_args))
    try:
        yield url, port
    finally:
        stop_local_server(port)


# ---- speech_emb models: a tiny corpus, the features step with real (tiny) encoders, training ----
WHISPER = {"source": "ct2-whisper:tiny.en", "engine": "torch", "layer": "last"}  # layer statistics
W2V = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
       "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 4, 4],
       "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "mask_time_prob": 0.0,
       "layerdrop": 0.0, "feat_extract_norm": "layer", "do_stable_layer_norm": True}
# two random-init vector encoders, listed against their cache hash order (training sees hash order)
EMB_ENCODERS = [WHISPER, {"source": "wav2vec2", "init": "random", "config": {**W2V, "hidden_size": 16}},
                {"source": "wav2vec2", "init": "random", "config": W2V}]
EMB_LABELS = ["angry", "sad"]


def write_emb_corpus(root, speakers: int = 3, per_speaker: int = 4) -> list:
    """Short float WAV clips (decoded identically by the features step and the predictor)."""
    from emoflow.corpora import Utterance

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    utts = []
    for i in range(speakers * per_speaker):
        spk = f"s{i % speakers}"
        t = np.arange(int(16000 * (0.5 + 0.07 * i))) / 16000
        wave = (0.1 + 0.05 * (i % 3)) * np.sin(2 * np.pi * (110 + 35 * i) * t) + 0.01 * rng.normal(size=t.size)
        path = root / f"u{i}.wav"
        sf.write(path, wave.astype(np.float32), 16000, subtype="FLOAT")
        utts.append(Utterance(id=f"u{i}", audio=str(path), text="", label=EMB_LABELS[i % 2], speaker=spk,
                              session=spk, corpus="toy"))
    return utts


def emb_preset(layers: int, layer_dim: int, vec_dim: int, frame_dim: int = 0) -> dict:
    e = {"layers": layers, "layer_dim": layer_dim, "vec_dim": vec_dim}
    if frame_dim:
        e["frame_dim"] = frame_dim
    return {"arch": "a3", "name": "tiny-emb", "inputs": ["speech_emb"],
            "model": {"speech_emb": {**e, "pool_hidden": 8}, "speech_hidden": 16, "mlp_hidden": [8], "dropout": 0.1},
            "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "epochs": 1}}


def train_emb_model(root, utts, feature_config: dict, preset_for) -> tuple:
    """Features step (cached embeddings) then training on them, as the pipeline runs them; returns
    (run folder holding model/, the features manifest, the store). ``preset_for(item)`` builds the
    preset from one loaded item (its array shapes)."""
    from emoflow import steps
    from emoflow.corpora import read_manifest, write_manifest
    from emoflow.training.data import load_items

    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root / "in.jsonl", utts)
    store = open_store(str(root.parent / "store"))
    steps.features(str(root / "in.jsonl"), str(root / "features.jsonl"), store.uri(""), feature_config)
    manifest = read_manifest(root / "features.jsonl")
    item = load_items(manifest[:1], store, EMB_LABELS, {"speech_emb"})[0]
    preset = preset_for(item)
    steps.train(str(root / "features.jsonl"), store.uri(""), "a3", preset, str(root / "run"), epochs=1,
                feature_config=feature_config, progress=False)
    return root / "run", manifest, store


# ---- text-only models (no audio input: A1 on MELD text) ----
def text_only_preset(**text) -> dict:
    """The tiny A1 preset, text only (random-init 2-layer BERT, real WordPiece tokenizer), with the
    dialogue Bi-GRU as the meld-text presets have it."""
    import copy

    p = copy.deepcopy(load_preset("a1", "tiny"))
    p["name"] = "tiny-text"
    p["inputs"] = ["text"]
    p.pop("features", None)
    p["model"].pop("speech", None)
    p["model"]["text"].update({"context": "dialogue", "norm": True, "residual": True, **text})
    return p


def register_text_only_model(store_dir, name: str = "emoflow-meld-text", seed: int = 0):
    """A randomly initialised tiny text-only A1 registered as production, saved as training saves
    it (model/ with an empty feature_config.json: no features step ran); returns (store URI, the
    model as built, in eval mode)."""
    import torch

    torch.manual_seed(seed)
    model = build_model("a1", text_only_preset(), LABELS).eval()
    out = store_dir / "text-model-src"
    save_model(model, out / "model")
    (out / "model" / "feature_config.json").write_text("{}")
    files = {f"model/{p.name}": p for p in (out / "model").iterdir()}
    files["reference_distribution.json"] = b'{"angry": 0.25, "happy": 0.25, "neutral": 0.25, "sad": 0.25}'
    store_uri = str(store_dir / "store")
    registry = Registry(open_store(store_uri))
    version = registry.register(name, files, {"arch": "a1", "metric_value": 0.25})
    registry.promote(name, version, "production")
    return store_uri, model
