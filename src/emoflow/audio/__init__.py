"""emoflow.audio: decoding, log-mel features, SpecAugment, speech encoders and embeddings.

Submodules import lazily so ``import emoflow.audio`` stays light:
``io`` (load_audio, AudioError), ``logmel`` (LogMelConfig, logmel_batch; the function is ``emoflow.audio.logmel.logmel``),
``features`` (extract_features, load_logmel), ``specaugment`` (SpecAugment, ChunkSampler, random_chunk),
``embeddings`` (EmbeddingCache, compute_embeddings, load_embedding), ``encoders``
(load_speech_encoder).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_audio": "io", "AudioError": "io",
    "LogMelConfig": "logmel", "logmel_batch": "logmel",
    "extract_features": "features", "load_logmel": "features", "FeatureError": "features",
    "SpecAugment": "specaugment", "ChunkSampler": "specaugment", "random_chunk": "specaugment",
    "compute_embeddings": "embeddings", "load_embedding": "embeddings", "EmbeddingCache": "embeddings",
    "load_speech_encoder": "encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"emoflow.audio.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'emoflow.audio' has no attribute {name!r}")
