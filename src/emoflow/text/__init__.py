"""emoflow.text: transcription (reference / faster-whisper / pocketsphinx) and text encoders.

Submodules import lazily: ``transcribe`` (use ``from emoflow.text.transcribe import transcribe``;
the package name ``transcribe`` is the module), ``encoders`` (load_text_encoder).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "wer": "transcribe", "TranscribeError": "transcribe",
    "load_text_encoder": "encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"emoflow.text.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'emoflow.text' has no attribute {name!r}")
