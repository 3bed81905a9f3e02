"""Suite-wide settings: no hub access, a private EMOFLOW_HOME per session (assets shared)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("EMOFLOW_HOME", str(REPO / ".emoflow"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(os.environ["EMOFLOW_HOME"]) / "numba"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = REPO.parent / "shared" / "data"

from s3_fixture import s3_server, s3_store  # noqa: E402,F401  (SeaweedFS S3 on loopback)
