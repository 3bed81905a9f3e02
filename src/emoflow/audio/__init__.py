"""emoflow.audio: decoding, log-mel features, SpecAugment, speech encoders and embeddings.

Submodules import lazily so ``import emoflow.audio`` stays light:
``io`` (load_audio, AudioError), ``logmel`` (LogMelConfig, logmel, logmel_batch),
``features`` (extract_features, load_logmel), ``specaugment`` (SpecAugment, ChunkSampler, random_chunk),
``embeddings`` (EmbeddingCache, compute_embeddings, load_embedding).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_audio": "io", "AudioError": "io",
    "LogMelConfig": "logmel", "logmel": "logmel", "logmel_batch": "logmel",
    "extract_features": "features", "load_logmel": "features", "FeatureError": "features",
    "SpecAugment": "specaugment", "ChunkSampler": "specaugment", "random_chunk": "specaugment",
    "compute_embeddings": "embeddings", "load_embedding": "embeddings", "EmbeddingCache": "embeddings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"emoflow.audio.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'emoflow.audio' has no attribute {name!r}")
