"""emoflow.models: emotion recognition architectures behind one registry.

Each architecture is one folder (model.py, presets/, paper.yaml) found by discovery: the built-in
``emoflow.models.archs`` package, entry points ``emoflow.architectures``, and the folders in
``$EMOFLOW_ARCH_PATH`` (see ``emoflow.models.registry``). Model code is imported on first use
(build_model / get_arch).
"""

from emoflow.models.base import EmotionModel, build_optimizers
from emoflow.models.ensemble import SeedEnsemble, ensemble_size
from emoflow.models.registry import (
    PAPER_FIGURES,
    arch_folder,
    build_model,
    describe_presets,
    discover,
    format_presets,
    get_arch,
    list_archs,
    list_presets,
    load_model,
    load_preset,
    paper_facts,
    param_count,
    register,
    save_model,
)

__all__ = [
    "PAPER_FIGURES",
    "EmotionModel",
    "arch_folder",
    "discover",
    "paper_facts",
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
