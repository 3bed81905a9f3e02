"""Shared helpers for serving tests: a registered tiny model and audio payloads."""

import base64
import io
import socket

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
