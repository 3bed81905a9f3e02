"""emoflow.storage: one artifact-store interface over a local folder or S3 (MinIO/SeaweedFS).

    store = open_store("file:///data/store")      # or "/data/store", "s3://bucket/prefix"
    store.put_bytes("a/b.json", b"{}"); store.get_bytes("a/b.json"); store.list("a/")

Full-URI helpers: read_uri(uri), fetch_to_local(uri, path), fetch_prefix_once(uri, folder), split_uri(uri).
"""

from .base import (
    ObjectInfo,
    Store,
    StoreAuthError,
    StoreConnectionError,
    StoreError,
    StoreKeyError,
    StoreKeyInvalid,
    check_key,
)
from .local import LocalStore
from .uri import fetch_prefix_once, fetch_to_local, open_store, read_uri, split_uri


def __getattr__(name):
    # S3Store imports the minio SDK; load it only when asked for.
    if name == "S3Store":
        from .s3 import S3Store

        return S3Store
    raise AttributeError(f"module 'emoflow.storage' has no attribute {name!r}")


__all__ = [
    "ObjectInfo",
    "Store",
    "StoreError",
    "StoreKeyError",
    "StoreKeyInvalid",
    "StoreAuthError",
    "StoreConnectionError",
    "LocalStore",
    "S3Store",
    "check_key",
    "open_store",
    "read_uri",
    "fetch_prefix_once",
    "fetch_to_local",
    "split_uri",
]
