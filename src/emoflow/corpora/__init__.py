"""Corpora: the utterance record, manifests, corpus adapters and the ingest step."""

from emoflow.corpora.record import (
    ManifestError,
    Utterance,
    iter_manifest,
    manifest_bytes,
    parse_manifest_bytes,
    read_manifest,
    write_manifest,
)

__all__ = [
    "ManifestError",
    "Utterance",
    "iter_manifest",
    "manifest_bytes",
    "parse_manifest_bytes",
    "read_manifest",
    "write_manifest",
]
