"""Settings shared by every layer: where emoflow keeps its files, and YAML loading.

Everything is read from the environment so that the same code runs in a KFP
container, under ``kfp.local`` and in tests:

- ``EMOFLOW_HOME``: working folder; holds ``assets/`` (offline model files) and, for the
  embedded default, ``store/``. Default: ``./.emoflow`` when the current folder has one (a
  checkout set up by ``make``), else ``~/.cache/emoflow``.
- ``EMOFLOW_STORE``: artifact store URI (default ``file://$EMOFLOW_HOME/store``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml


def home() -> Path:
    if os.environ.get("EMOFLOW_HOME"):
        return Path(os.environ["EMOFLOW_HOME"]).expanduser().resolve()
    local = Path.cwd() / ".emoflow"
    return (local if local.is_dir() else Path.home() / ".cache" / "emoflow").resolve()


def store_uri() -> str:
    return os.environ.get("EMOFLOW_STORE") or (home() / "store").as_uri()


def assets_dir() -> Path:
    return home() / "assets"


def load_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
