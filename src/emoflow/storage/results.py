"""Content-keyed results of expensive work, kept in the artifact store and reused by later runs.

KFP's own cache key holds the ids of the input artifacts, which are new in every run (ingest is
never cached), so on a cluster it never hits. Instead, each expensive unit (a transcription, a
training fold, a final fit) is keyed by a hash of exactly what determines its output, and looks
that key up in the store before doing the work::

    results = ResultCache(store)
    key = results.key("fold", {"run": run_key, "fold": plan})
    meta = results.lookup(key, dest)          # None: compute, then
    results.save(key, meta, files_dir)        # files first, the completion marker last

Layout::

    cache/<kind>/<hash>/entry.json            completion marker: meta, files with sha256 + size
    cache/<kind>/<hash>/<attempt>/<file>      the entry's files, one folder per writing attempt

The hash covers the caller's inputs and the code version (``code_version``: emoflow's version,
``SCHEMA``, and a digest of the package's source), so a code change invalidates every entry
(callers add the digest of code outside the package, e.g. an architecture folder, to their inputs).
``entry.json`` is written last and only once (an atomic create): a step killed while saving
leaves files without a marker, which no lookup trusts; of two writers of the same key the first
marker wins and the other's files are removed. A lookup verifies each file's checksum and
treats anything missing or changed as a miss. ``reuse=False`` ignores existing entries and
replaces them with the recomputed ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

from emoflow.config import config_hash

from .base import Store, StoreError

PREFIX = "cache"
SCHEMA = 1  # bump when the layout or the meaning of an entry changes
MARKER = "entry.json"

log = logging.getLogger("emoflow.storage.results")


@functools.lru_cache(maxsize=None)
def source_digest(root: Path) -> str:
    """sha256 (16 hex) of the Python and YAML files under `root` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix in (".py", ".yaml", ".yml") and p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_version() -> dict:
    """emoflow's version, the cache schema and the digest of the package's source and presets."""
    import emoflow

    return {"emoflow": emoflow.__version__, "schema": SCHEMA,
            "source": source_digest(Path(emoflow.__file__).resolve().parent)}


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def jsonable(obj: Any) -> Any:
    """`obj` as it comes back from a cache entry (a JSON round trip; numpy values become plain)."""
    return json.loads(json.dumps(obj, default=_plain))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ResultCache:
    """Reusable results in `store` under ``cache/``; ``reuse=False`` recomputes and replaces them."""

    def __init__(self, store: Store, *, reuse: bool = True):
        self.store = store
        self.reuse = reuse

    def key(self, kind: str, inputs: Any) -> str:
        """``<kind>/<hash>`` of the inputs (JSON-able) and the code version."""
        return f"{kind}/{config_hash({'kind': kind, 'inputs': inputs, 'code': code_version()}, 32)}"

    def _marker(self, key: str) -> str:
        return f"{PREFIX}/{key}/{MARKER}"

    def lookup(self, key: str, dest: str | Path | None = None) -> dict | None:
        """The entry's meta, with its files fetched into `dest` (verified), or None for a miss."""
        if not self.reuse:
            return None
        try:
            entry = self.store.get_json(self._marker(key))
        except KeyError:
            return None
        except StoreError as exc:
            log.warning("cache entry %s is unreadable (%s): recomputing", key, exc)
            return None
        files = entry.get("files") or {}
        if files and dest is None:
            raise ValueError(f"cache entry {key} has files: lookup needs a destination folder")
        try:
            if files:
                self._fetch(key, entry, Path(dest))
        except (KeyError, StoreError, ValueError) as exc:
            log.warning("cache entry %s is incomplete (%s): recomputing", key, exc)
            return None
        return entry.get("meta")

    def _fetch(self, key: str, entry: dict, dest: Path) -> None:
        base = f"{PREFIX}/{key}/{entry['attempt']}"
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            got = Path(tmp)
            for rel, info in entry["files"].items():
                path = self.store.get_file(f"{base}/{rel}", got / rel)
                if path.stat().st_size != info["size"] or _sha256(path) != info["sha256"]:
                    raise ValueError(f"{rel} does not match its checksum")
            for rel in entry["files"]:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (got / rel).replace(dest / rel)

    def save(self, key: str, meta: Any = None, files_dir: str | Path | None = None) -> bool:
        """Store the files under `files_dir` (recursively) and `meta` (JSON-able) under `key`.

        Returns False when another writer completed the same key first (its entry stays)."""
        attempt = uuid.uuid4().hex[:12]
        base = f"{PREFIX}/{key}/{attempt}"
        files = {}
        if files_dir is not None:
            root = Path(files_dir)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = path.relative_to(root).as_posix()
                self.store.put_file(f"{base}/{rel}", path)
                files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        # key order kept: a reused result serialises exactly as the computed one did
        entry = json.dumps({"attempt": attempt, "files": files, "meta": meta, "code": code_version()},
                           indent=1, default=_plain).encode()
        if self.reuse:
            won = self.store.put_bytes_if_absent(self._marker(key), entry)
        else:
            self.store.put_bytes(self._marker(key), entry)
            won = True
        # only the marker's attempt is ever read: the winner drops every other attempt (half
        # entries of killed writers), a loser its own files; an entry of meta only has no files
        prefix = f"{PREFIX}/{key}/"
        for name in self.store.list(prefix) if files else []:
            part = name[len(prefix):].split("/", 1)[0]
            if part != MARKER and (part != attempt if won else part == attempt):
                self.store.delete(name, missing_ok=True)
        if not won:
            log.info("cache entry %s was completed by another writer first: kept theirs", key)
        return won
