"""emoflow.models: emotion recognition architectures a1..a4 behind one registry.

Architecture modules are imported on first use (build_model / get_arch).
"""

from emoflow.models.base import EmotionModel, build_optimizers
from emoflow.models.ensemble import SeedEnsemble, ensemble_size
from emoflow.models.registry import (
    build_model,
    describe_presets,
    format_presets,
    get_arch,
    list_archs,
    list_presets,
    load_model,
    load_preset,
    param_count,
    register,
    save_model,
)

__all__ = [
    "EmotionModel",
    "SeedEnsemble",
    "build_model",
    "build_optimizers",
    "describe_presets",
    "ensemble_size",
    "format_presets",
    "get_arch",
    "list_archs",
    "list_presets",
    "load_model",
    "load_preset",
    "param_count",
    "register",
    "save_model",
]
