"""Local-filesystem store (the embedded default).

Objects are plain files under a root folder. Writes go to a temporary file in the
same folder, are fsynced, then os.replace'd over the target, so a reader sees either
the old or the new content, never a partial file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .base import TMP_MARKER, ObjectInfo, Store, StoreError, StoreKeyError, check_key, check_prefix

_CHUNK = 1 << 20


def _tmp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")


def atomic_write(target: Path, write) -> None:
    """Create parents, call ``write(fileobj)`` on a temp file next to ``target``, then rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise StoreError(f"cannot write {target}: a folder of that name exists")
    tmp = _tmp_path(target)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalStore(Store):
    """Store rooted at a local folder (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes({key!r}) needs bytes, got {type(data).__name__}")
        atomic_write(self._path(key), lambda f: f.write(data))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes_if_absent({key!r}) needs bytes, got {type(data).__name__}")
        target = self._path(key)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(target)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, target)  # atomic, and fails if the target exists
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreKeyError(key, self.uri()) from None

    def put_file(self, key: str, local_path: str | Path) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(f"put_file({key!r}): local file {src} does not exist")
        target = self._path(key)
        with open(src, "rb") as fin:
            atomic_write(target, lambda f: shutil.copyfileobj(fin, f, _CHUNK))

    def get_file(self, key: str, local_path: str | Path) -> Path:
        src = self._path(key)
        dest = Path(local_path)
        try:
            fin = open(src, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreKeyError(key, self.uri()) from None
        with fin:
            atomic_write(dest, lambda f: shutil.copyfileobj(fin, f, _CHUNK))
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in files:
                if TMP_MARKER in name:
                    continue
                key = base + name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise StoreKeyError(key, self.uri()) from None
        if not path.is_file():
            raise StoreKeyError(key, self.uri())
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime, etag=f"{st.st_size:x}-{st.st_mtime_ns:x}")

    def delete(self, key: str, missing_ok: bool = False) -> None:
        path = self._path(key)
        try:
            if path.is_dir():
                raise FileNotFoundError
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            if not missing_ok:
                raise StoreKeyError(key, self.uri()) from None
            return
        # Empty parent folders are left in place: removing them would race with writers.

    def uri(self, key: str = "") -> str:
        return (self._path(key) if key else self.root).as_uri()
