"""The Store interface, its errors and key rules, shared by every backend.

Keys are '/'-separated relative strings ("features/abc/utt1.safetensors"). A key may
not be absolute, may not contain '.' or '..' segments, empty segments, backslashes or
NUL, and may not use the reserved temporary-name marker; so no key can escape a
store's root.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Marker in the names of in-flight temporary files; never a valid key, never listed.
TMP_MARKER = ".emoflow-tmp-"


class StoreError(Exception):
    """Any storage failure (the base of every storage error)."""


class StoreKeyError(StoreError, KeyError):
    """The key does not exist in the store. ``.key`` holds the key."""

    def __init__(self, key: str, where: str = ""):
        self.key = key
        self.where = where
        msg = f"no such key {key!r}" + (f" in {where}" if where else "")
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class StoreKeyInvalid(StoreError, ValueError):
    """The key is malformed or would escape the store root."""


class StoreAuthError(StoreError, PermissionError):
    """The object store rejected the credentials (wrong key/secret, no permission)."""


class StoreConnectionError(StoreError, ConnectionError):
    """The object store could not be reached."""


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object: key, size in bytes, mtime (epoch seconds), etag."""

    key: str
    size: int
    mtime: float
    etag: str


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise StoreKeyInvalid naming it."""
    if not isinstance(key, str):
        raise StoreKeyInvalid(f"store key must be a string, got {type(key).__name__}: {key!r}")
    if not key:
        raise StoreKeyInvalid("store key is empty")
    if key.startswith("/"):
        raise StoreKeyInvalid(f"store key {key!r} is absolute; keys are relative to the store root")
    if "\\" in key or "\x00" in key:
        raise StoreKeyInvalid(f"store key {key!r} contains a backslash or NUL")
    if key.endswith("/"):
        raise StoreKeyInvalid(f"store key {key!r} ends with '/' (that is a prefix, not a key)")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StoreKeyInvalid(
                f"store key {key!r} has an empty, '.' or '..' segment; keys may not escape the store root"
            )
        if TMP_MARKER in part:
            raise StoreKeyInvalid(f"store key {key!r} uses the reserved temporary marker {TMP_MARKER!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix: '' or a key-like string that may end with '/'."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str):
        raise StoreKeyInvalid(f"store prefix must be a string, got {prefix!r}")
    body = prefix[:-1] if prefix.endswith("/") else prefix
    try:
        check_key(body)
    except StoreKeyInvalid as e:
        raise StoreKeyInvalid(f"bad store prefix {prefix!r}: {e}") from None
    return prefix


class Store(ABC):
    """An artifact store: bytes and files under relative keys. Every write is atomic."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` (replacing any previous object) atomically."""

    @abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` does not exist yet (atomic create); True if written.

        Local stores use a hard link (fails if the target exists); S3 stores send
        ``If-None-Match: *`` (honoured by AWS S3, MinIO and SeaweedFS).
        """

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes; StoreKeyError if missing."""

    @abstractmethod
    def put_file(self, key: str, local_path: str | Path) -> None:
        """Upload a local file under ``key`` atomically."""

    @abstractmethod
    def get_file(self, key: str, local_path: str | Path) -> Path:
        """Download ``key`` to ``local_path`` (parents created, written atomically); returns the path."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if an object exists under ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (string prefix, recursive)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, mtime and etag of ``key``; StoreKeyError if missing."""

    @abstractmethod
    def delete(self, key: str, missing_ok: bool = False) -> None:
        """Delete ``key``; StoreKeyError if missing unless ``missing_ok``."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """Full URI of ``key`` (file://... or s3://...); the store root for ''."""

    # Conveniences built on the primitives.
    def put_json(self, key: str, obj: Any) -> None:
        """Write ``obj`` as indented, key-sorted UTF-8 JSON."""
        self.put_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def get_json(self, key: str) -> Any:
        """Read and parse a JSON object; StoreError naming the key if it is not valid JSON."""
        data = self.get_bytes(key)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.uri(key)} is not valid UTF-8 JSON: {e}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri()!r})"
