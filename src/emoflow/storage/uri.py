"""Opening stores from URIs and reading single objects by full URI.

Accepted URIs: a plain path ("/abs/dir", "rel/dir"), "file:///abs/dir" and
"s3://bucket/prefix".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import Store, StoreError, StoreKeyError
from .local import LocalStore, atomic_write


def _local_path(uri: str) -> Path:
    """Path from a plain path or file:// URI (only an empty or 'localhost' host)."""
    if uri.startswith("file:"):
        p = urlparse(uri)
        if p.netloc not in ("", "localhost"):
            raise StoreError(f"file URI {uri!r} names host {p.netloc!r}; only local files are supported")
        if not p.path:
            raise StoreError(f"file URI {uri!r} has no path")
        return Path(unquote(p.path))
    return Path(uri).expanduser()


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StoreError(f"S3 URI {uri!r} has no bucket (expected s3://bucket/key)")
    return bucket, key


def _scheme(uri: str) -> str:
    if not isinstance(uri, str) or not uri:
        raise StoreError(f"store URI must be a non-empty string, got {uri!r}")
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("file:"):
        return "file"
    if "://" in uri:
        raise StoreError(f"unsupported URI scheme in {uri!r} (use a path, file:// or s3://)")
    return "file"


def open_store(uri: str | Path, create: bool = False, **s3_options) -> Store:
    """Open the store at ``uri``: a LocalStore for paths/file://, an S3Store for s3://bucket/prefix.

    ``create=True`` creates a missing S3 bucket (local roots are created on first write).
    Extra keyword arguments (endpoint, access_key, secret_key, secure, region, retries)
    go to S3Store.
    """
    uri = str(uri)
    if _scheme(uri) == "s3":
        from .s3 import S3Store

        bucket, prefix = _split_s3(uri)
        return S3Store(bucket, prefix, create=create, **s3_options)
    if s3_options:
        raise TypeError(f"options {sorted(s3_options)} only apply to s3:// stores, not {uri!r}")
    return LocalStore(_local_path(uri))


def split_uri(uri: str | Path) -> tuple[str, str]:
    """Split a full object URI into (store URI of its folder/bucket, key).

    "s3://b/a/x.wav" -> ("s3://b", "a/x.wav"); "/d/x.wav" or "file:///d/x.wav" -> ("file:///d", "x.wav").
    """
    uri = str(uri)
    if _scheme(uri) == "s3":
        bucket, key = _split_s3(uri)
        if not key or key.endswith("/"):
            raise StoreError(f"S3 URI {uri!r} names no object (expected s3://bucket/key)")
        return f"s3://{bucket}", key
    path = _local_path(uri).resolve()
    if uri.endswith("/") or path.is_dir():
        raise StoreError(f"{uri!r} is a folder, not a file")
    return path.parent.as_uri(), path.name


def read_uri(uri: str | Path, **s3_options) -> bytes:
    """Bytes of the object at a full URI (path, file:// or s3://); StoreKeyError naming it if missing."""
    base, key = split_uri(uri)
    try:
        return open_store(base, **s3_options).get_bytes(key)
    except StoreKeyError:
        raise StoreKeyError(str(uri)) from None


def fetch_to_local(uri: str | Path, local_path: str | Path, **s3_options) -> Path:
    """Copy the object at a full URI to ``local_path`` (atomically); returns the local path."""
    base, key = split_uri(uri)
    dest = Path(local_path)
    if _scheme(str(uri)) == "file":
        src = Path(unquote(urlparse(base).path)) / key
        if not src.is_file():
            raise StoreKeyError(str(uri))
        if src.resolve() == dest.resolve():
            return dest
        with open(src, "rb") as fin:
            atomic_write(dest, lambda f: shutil.copyfileobj(fin, f, 1 << 20))
        return dest
    try:
        return open_store(base, **s3_options).get_file(key, dest)
    except StoreKeyError:
        raise StoreKeyError(str(uri)) from None


def fetch_prefix_once(uri: str, target: str | Path) -> Path:
    """Copy every object under a store prefix into the folder ``target``, once: a ``.complete``
    marker (written last) makes later calls return at once. StoreKeyError when nothing is there."""
    target = Path(target)
    if (target / ".complete").exists():
        return target
    store = open_store(uri)
    keys = store.list("")
    if not keys:
        raise StoreKeyError(f"no files under {uri!r}")
    for key in keys:
        store.get_file(key, target / key)
    (target / ".complete").write_text(uri + "\n")
    return target

