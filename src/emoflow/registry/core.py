"""Model registry in the artifact store: immutable versions and atomically updated aliases.

Layout under ``<root>/<model>/`` (root defaults to "registry"):

    v3/.claim              version number reservation (created with put-if-absent)
    v3/<file> ...          the version's files (weights, preset, label map, metrics, ...)
    v3/manifest.json       sha256 + size of every file, metadata, created time, run id;
                           written LAST, after every file was re-read and verified, so a
                           version is complete exactly when its manifest exists
    aliases/<alias>.json   {"version": "v3", "history": [...]}: one small object, written
                           only after the version it names is complete and verified

A crash (or a dead S3 server) at any point leaves either no manifest (an incomplete
version that list/resolve ignore and ``show`` reports) or a complete version whose
aliases were not moved; the previous alias target is always intact.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from emoflow import __version__ as EMOFLOW_VERSION
from emoflow.storage import Store, StoreError, StoreKeyError, StoreKeyInvalid, check_key, open_store

MANIFEST = "manifest.json"
CLAIM = ".claim"
RESERVED = {MANIFEST, CLAIM}
DEFAULT_ALIAS = "production"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_CHUNK = 1 << 20


class RegistryError(Exception):
    """Registry operation failed (bad reference, failed registration, ...)."""


class RegistryNotFound(RegistryError, LookupError):
    """Model, version or alias does not exist (or the version is incomplete)."""


class RegistryIntegrityError(RegistryError):
    """A stored file does not match its manifest (size or sha256). ``.file`` names it."""

    def __init__(self, msg: str, file: str):
        super().__init__(msg)
        self.file = file


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-' (starting with a letter or digit)"
        )
    return name


def _check_alias(alias: str) -> str:
    _check_name("alias", alias)
    if _VERSION_RE.match(alias) or alias == "aliases":
        raise RegistryError(f"alias name {alias!r} is reserved (looks like a version)")
    return alias


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise RegistryError(f"invalid version {version!r}: versions look like v1, v2, ...")
    return version


def _vnum(version: str) -> int:
    return int(version[1:])


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _expand_files(files: Mapping[str, Any]) -> dict[str, bytes | Path]:
    """Validate the files mapping; folders expand to their files under the given key."""
    if not isinstance(files, Mapping) or not files:
        raise RegistryError("register needs a non-empty mapping {name in version: Path | bytes}")
    out: dict[str, bytes | Path] = {}
    for key, value in files.items():
        try:
            check_key(key)
        except StoreKeyInvalid as e:
            raise RegistryError(f"bad file name {key!r} in registration: {e}") from None
        if isinstance(value, (bytes, bytearray, memoryview)):
            items = [(key, bytes(value))]
        elif isinstance(value, (str, Path)):
            p = Path(value)
            if p.is_dir():
                items = [
                    (f"{key}/{f.relative_to(p).as_posix()}", f) for f in sorted(p.rglob("*")) if f.is_file()
                ]
                if not items:
                    raise RegistryError(f"file {key!r}: folder {p} is empty")
            elif p.is_file():
                items = [(key, p)]
            else:
                raise RegistryError(f"file {key!r}: local path {p} does not exist")
        else:
            raise RegistryError(f"file {key!r}: expected a Path or bytes, got {type(value).__name__}")
        for k, v in items:
            if k.split("/")[0] in RESERVED or k == "aliases":
                raise RegistryError(f"file name {k!r} is reserved by the registry")
            if k in out:
                raise RegistryError(f"file {k!r} given twice")
            out[k] = v
    return out


class Registry:
    """Versioned models in a Store (or a store URI). See the module docstring for the layout."""

    def __init__(self, store: Store | str | Path, root: str = "registry"):
        self.store = store if isinstance(store, Store) else open_store(store)
        self.root = check_key(root.strip("/"))

    def __repr__(self) -> str:
        return f"Registry({self.store.uri(self.root)!r})"

    # -- keys ----------------------------------------------------------------------
    def _k(self, name: str, *parts: str) -> str:
        return "/".join((self.root, name) + parts)

    def _alias_key(self, name: str, alias: str) -> str:
        return self._k(name, "aliases", f"{alias}.json")

    def version_uri(self, name: str, version: str) -> str:
        """Full URI of a version folder (e.g. for a KServe storageUri)."""
        return self.store.uri(self._k(_check_name("model", name), _check_version(version)))

    # -- listing -------------------------------------------------------------------
    def _scan(self, name: str) -> tuple[list[str], list[str]]:
        """(complete, incomplete) versions of a model, each sorted by number."""
        complete, seen = set(), set()
        prefix = self._k(name) + "/"
        for key in self.store.list(prefix):
            parts = key[len(prefix):].split("/")
            if len(parts) >= 2 and _VERSION_RE.match(parts[0]):
                seen.add(parts[0])
                if parts[1:] == [MANIFEST]:
                    complete.add(parts[0])
        order = lambda vs: sorted(vs, key=_vnum)  # noqa: E731
        return order(complete), order(seen - complete)

    def list_models(self) -> list[str]:
        """Names of models with at least one complete version."""
        names = set()
        prefix = self.root + "/"
        for key in self.store.list(prefix):
            parts = key[len(prefix):].split("/")
            if len(parts) == 3 and parts[2] == MANIFEST and _VERSION_RE.match(parts[1]):
                names.add(parts[0])
        return sorted(names)

    def list_versions(self, name: str, include_incomplete: bool = False) -> list[str]:
        """Complete versions of ``name`` (v1, v2, ...); incomplete ones too if asked."""
        complete, incomplete = self._scan(_check_name("model", name))
        return sorted(complete + incomplete, key=_vnum) if include_incomplete else complete

    def list_aliases(self, name: str) -> dict[str, str]:
        """{alias: version} for a model."""
        prefix = self._k(_check_name("model", name), "aliases") + "/"
        out = {}
        for key in self.store.list(prefix):
            alias = key[len(prefix):]
            if alias.endswith(".json") and "/" not in alias:
                out[alias[:-5]] = self._read_alias(name, alias[:-5])["version"]
        return out

    # -- manifest ------------------------------------------------------------------
    def manifest(self, name: str, version: str) -> dict:
        """The manifest of a complete version; RegistryNotFound if missing or incomplete."""
        _check_name("model", name)
        _check_version(version)
        try:
            return self.store.get_json(self._k(name, version, MANIFEST))
        except StoreKeyError:
            complete, incomplete = self._scan(name)
            if version in incomplete:
                raise RegistryNotFound(
                    f"version {version} of model {name!r} is incomplete (its registration did not finish)"
                ) from None
            if not complete and not incomplete:
                raise RegistryNotFound(f"no model {name!r} in {self.store.uri(self.root)}") from None
            raise RegistryNotFound(
                f"model {name!r} has no version {version} (versions: {', '.join(complete) or 'none'})"
            ) from None

    # -- registration --------------------------------------------------------------
    def _claim(self, name: str, version: str | None) -> str:
        token = json.dumps({"claimed": _now(), "token": uuid.uuid4().hex}).encode()
        if version is not None:
            _check_version(version)
            if not self.store.put_bytes_if_absent(self._k(name, version, CLAIM), token):
                raise RegistryError(
                    f"version {version} of model {name!r} already exists; versions are immutable"
                )
            return version
        complete, incomplete = self._scan(name)
        n = max([_vnum(v) for v in complete + incomplete], default=0) + 1
        for _ in range(1000):
            v = f"v{n}"
            # Atomic create: two concurrent registrations never get the same number.
            if self.store.put_bytes_if_absent(self._k(name, v, CLAIM), token):
                return v
            n += 1
        raise RegistryError(f"could not allocate a version number for model {name!r}")

    def register(
        self,
        name: str,
        files: Mapping[str, Path | bytes | str],
        metadata: Mapping[str, Any] | None = None,
        aliases: Iterable[str] = (),
        version: str | None = None,
        on_file_written: Callable[[str, int, int], None] | None = None,
    ) -> str:
        """Store a new immutable version of ``name`` and return it ("v1", "v2", ...).

        ``files`` maps names inside the version ("model.safetensors", "plots/cm.png") to
        bytes, local files or local folders (expanded under that name). ``metadata`` is
        kept in the manifest (``pipeline_run_id``, else ``pipeline_run`` or ``run_id``, is
        lifted to the top level). Every file
        is uploaded, then re-read and checked against its sha256; then the manifest is
        written; then each alias in ``aliases`` is pointed at the new version.
        ``on_file_written(file, done, total)`` is called after each upload (a test hook).
        On any failure a RegistryError names the model, version and step, and no alias moves.
        """
        _check_name("model", name)
        aliases = [_check_alias(a) for a in aliases]
        meta = dict(metadata or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise RegistryError(f"metadata for model {name!r} is not JSON-serialisable: {e}") from None
        entries = _expand_files(files)

        # Hash locally first: the manifest records what we meant to store.
        digests: dict[str, dict] = {}
        for key, value in entries.items():
            if isinstance(value, bytes):
                digests[key] = {"sha256": hashlib.sha256(value).hexdigest(), "size": len(value)}
            else:
                sha, size = _sha256_file(value)
                digests[key] = {"sha256": sha, "size": size}

        step = "allocating a version"
        v = version
        try:
            v = self._claim(name, version)
            total = len(entries)
            for i, (key, value) in enumerate(entries.items(), 1):
                step = f"uploading file {key!r}"
                if isinstance(value, bytes):
                    self.store.put_bytes(self._k(name, v, key), value)
                else:
                    self.store.put_file(self._k(name, v, key), value)
                if on_file_written is not None:
                    on_file_written(key, i, total)
            for key in entries:
                step = f"verifying file {key!r}"
                self._verify_file(name, v, key, digests[key])
            step = "writing the manifest"
            manifest = {
                "format": 1,
                "model": name,
                "version": v,
                "created": _now(),
                "emoflow_version": EMOFLOW_VERSION,
                "pipeline_run_id": meta.get("pipeline_run_id") or meta.get("pipeline_run") or meta.get("run_id"),
                "metadata": meta,
                "files": digests,
            }
            blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            if not self.store.put_bytes_if_absent(self._k(name, v, MANIFEST), blob):
                raise RegistryError(f"version {v} of model {name!r} already has a manifest; versions are immutable")
            for alias in aliases:
                step = f"setting alias {alias!r}"
                self._write_alias(name, alias, v)
        except RegistryError as e:
            raise RegistryError(f"registering model {name!r} {v or ''} failed while {step}: {e}") from e
        except (StoreError, OSError) as e:
            if step.startswith("setting alias"):
                after = f"version {v} is complete but alias {step.split()[-1]} was not moved"
            else:
                after = f"version {v or '(none)'} stays incomplete and no alias was changed"
            raise RegistryError(f"registering model {name!r} {v or ''} failed while {step}: {e}; {after}") from e
        return v

    def _verify_file(self, name: str, version: str, key: str, want: dict) -> None:
        """Re-read one stored file: size from stat, sha256 of the downloaded bytes."""
        skey = self._k(name, version, key)
        try:
            size = self.store.stat(skey).size
        except StoreKeyError:
            raise RegistryIntegrityError(f"file {key!r} of {name} {version} is missing from the store", key) from None
        if size != want["size"]:
            raise RegistryIntegrityError(
                f"file {key!r} of {name} {version}: stored size {size} != manifest size {want['size']}", key
            )
        with tempfile.TemporaryDirectory(prefix="emoflow-verify-") as tmp:
            local = self.store.get_file(skey, Path(tmp) / "f")
            sha, _ = _sha256_file(local)
        if sha != want["sha256"]:
            raise RegistryIntegrityError(
                f"file {key!r} of {name} {version}: sha256 {sha} != manifest {want['sha256']}", key
            )

    def verify(self, ref: str) -> dict:
        """Check every file of a version against its manifest; returns the manifest."""
        name, version = self.resolve(ref)
        manifest = self.manifest(name, version)
        for key, want in manifest["files"].items():
            self._verify_file(name, version, key, want)
        return manifest

    # -- references ----------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[str, str]:
        """(name, version) for "name" (its production alias, else its latest version),
        "name@alias" or "name@v3". Only complete versions resolve."""
        if not isinstance(ref, str) or not ref:
            raise RegistryError(f"bad model reference {ref!r} (use name, name@alias or name@v3)")
        name, sep, tag = ref.partition("@")
        _check_name("model", name)
        if sep and not tag:
            raise RegistryError(f"bad model reference {ref!r}: empty alias/version after '@'")
        if not sep:
            rec = self._read_alias(name, DEFAULT_ALIAS, missing_ok=True)
            if rec is not None:
                return name, rec["version"]
            complete, incomplete = self._scan(name)
            if not complete:
                what = "only incomplete versions" if incomplete else "no versions"
                raise RegistryNotFound(f"model {name!r} has {what} in {self.store.uri(self.root)}")
            return name, complete[-1]
        if _VERSION_RE.match(tag):
            self.manifest(name, tag)  # raises if missing or incomplete
            return name, tag
        _check_alias(tag)
        rec = self._read_alias(name, tag, missing_ok=True)
        if rec is None:
            raise RegistryNotFound(f"model {name!r} has no alias {tag!r} (aliases: {sorted(self.list_aliases(name))})")
        self.manifest(name, rec["version"])
        return name, rec["version"]

    # -- aliases -------------------------------------------------------------------
    def _read_alias(self, name: str, alias: str, missing_ok: bool = False) -> dict | None:
        key = self._alias_key(name, alias)
        try:
            rec = self.store.get_json(key)
        except StoreKeyError:
            if missing_ok:
                return None
            raise RegistryNotFound(f"model {name!r} has no alias {alias!r}") from None
        if not isinstance(rec, dict) or not _VERSION_RE.match(str(rec.get("version", ""))):
            raise RegistryError(f"alias object {self.store.uri(key)} is malformed: {rec!r}")
        rec.setdefault("history", [])
        return rec

    def _write_alias(self, name: str, alias: str, version: str, history: list | None = None, **extra) -> dict:
        prev = self._read_alias(name, alias, missing_ok=True)
        if history is None:
            history = list(prev["history"]) if prev else []
            if prev and prev["version"] != version:
                history.append({"version": prev["version"], "since": prev.get("updated")})
        rec = {"model": name, "alias": alias, "version": version, "updated": _now(), "history": history, **extra}
        # One small PUT: readers see the old or the new alias, never a mix.
        self.store.put_json(self._alias_key(name, alias), rec)
        return rec

    def get_alias(self, name: str, alias: str = DEFAULT_ALIAS) -> str | None:
        """Version an alias points at, or None when the alias is not set."""
        rec = self._read_alias(_check_name("model", name), _check_alias(alias), missing_ok=True)
        return rec["version"] if rec else None

    def alias_history(self, name: str, alias: str = DEFAULT_ALIAS) -> list[str]:
        """Previous versions of an alias, oldest first (what rollback walks back through)."""
        rec = self._read_alias(_check_name("model", name), _check_alias(alias))
        return [h["version"] for h in rec["history"]]

    def set_alias(self, name: str, alias: str, version: str, verify: bool = True) -> dict:
        """Point ``alias`` at a complete ``version`` (files re-verified first unless verify=False)."""
        _check_name("model", name)
        _check_alias(alias)
        manifest = self.manifest(name, _check_version(version))
        if verify:
            for key, want in manifest["files"].items():
                self._verify_file(name, version, key, want)
        return self._write_alias(name, alias, version)

    def promote(self, name: str, version: str, alias: str = DEFAULT_ALIAS, verify: bool = True) -> dict:
        """Move ``alias`` (default production) to ``version``; the old target goes into its history."""
        return self.set_alias(name, alias, version, verify=verify)

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> str:
        """Point ``alias`` back at its previous version; returns that version."""
        _check_name("model", name)
        _check_alias(alias)
        rec = self._read_alias(name, alias)
        history = list(rec["history"])
        if not history:
            raise RegistryError(
                f"alias {alias!r} of model {name!r} has no previous version to roll back to "
                f"(it has only ever pointed at {rec['version']})"
            )
        target = history.pop()["version"]
        self.manifest(name, target)
        self._write_alias(name, alias, target, history=history, rolled_back_from=rec["version"])
        return target

    # -- reading -------------------------------------------------------------------
    def download(self, ref: str, dest: str | Path) -> Path:
        """Copy a version's files (and manifest.json) into ``dest``, verifying size and sha256.

        Raises RegistryIntegrityError naming the first file that does not match."""
        name, version = self.resolve(ref)
        manifest = self.manifest(name, version)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for key, want in sorted(manifest["files"].items()):
            local = dest.joinpath(*key.split("/"))
            try:
                self.store.get_file(self._k(name, version, key), local)
            except StoreKeyError:
                raise RegistryIntegrityError(
                    f"file {key!r} of {name} {version} is listed in the manifest but missing from the store", key
                ) from None
            sha, size = _sha256_file(local)
            if size != want["size"] or sha != want["sha256"]:
                local.unlink(missing_ok=True)
                raise RegistryIntegrityError(
                    f"file {key!r} of {name} {version} is corrupt: size {size}, sha256 {sha}; "
                    f"manifest says size {want['size']}, sha256 {want['sha256']}",
                    key,
                )
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return dest

    def show(self, ref: str) -> dict:
        """Details: for "name" the model (versions, incomplete versions, aliases); for
        "name@x" one version (manifest, aliases pointing at it, or ``complete: False``)."""
        name, sep, tag = ref.partition("@")
        _check_name("model", name)
        complete, incomplete = self._scan(name)
        aliases = self.list_aliases(name)
        if not complete and not incomplete:
            raise RegistryNotFound(f"no model {name!r} in {self.store.uri(self.root)}")
        if not sep:
            return {
                "model": name,
                "versions": complete,
                "incomplete": incomplete,
                "aliases": aliases,
                "uri": self.store.uri(self._k(name)),
            }
        version = tag if _VERSION_RE.match(tag) else None
        if version is None:
            _check_alias(tag)
            if tag not in aliases:
                raise RegistryNotFound(f"model {name!r} has no alias {tag!r} (aliases: {sorted(aliases)})")
            version = aliases[tag]
        if version in incomplete:
            prefix = self._k(name, version) + "/"
            files = [k[len(prefix):] for k in self.store.list(prefix)]
            return {
                "model": name,
                "version": version,
                "complete": False,
                "files_present": [f for f in files if f != CLAIM],
                "aliases": sorted(a for a, v in aliases.items() if v == version),
            }
        manifest = self.manifest(name, version)
        return {
            "model": name,
            "version": version,
            "complete": True,
            "uri": self.version_uri(name, version),
            "aliases": sorted(a for a, v in aliases.items() if v == version),
            "created": manifest.get("created"),
            "pipeline_run_id": manifest.get("pipeline_run_id"),
            "metadata": manifest.get("metadata", {}),
            "manifest": manifest,
        }
