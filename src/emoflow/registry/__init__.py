"""emoflow.registry: versioned models with atomic aliases in the artifact store.

    reg = Registry(open_store(store_uri()))
    v = reg.register("emo", {"model.safetensors": path, "preset.json": b"..."}, {"pipeline_run_id": rid},
                     aliases=["candidate"])
    reg.promote("emo", v)                 # production -> v
    reg.download("emo@production", dest)  # verified copy
    reg.rollback("emo")                   # production -> previous version
"""

from .core import (
    DEFAULT_ALIAS,
    MANIFEST,
    Registry,
    RegistryError,
    RegistryIntegrityError,
    RegistryNotFound,
)

__all__ = [
    "DEFAULT_ALIAS",
    "MANIFEST",
    "Registry",
    "RegistryError",
    "RegistryIntegrityError",
    "RegistryNotFound",
]
