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
from emoflow.corpora.base import CorpusError, ItemError, open_source
from emoflow.corpora.adapters import ADAPTERS, get_adapter
from emoflow.corpora.validate import IngestError, ValidationConfig
from emoflow.corpora.ingest import IngestResult, ingest

__all__ = [
    "ADAPTERS",
    "CorpusError",
    "IngestError",
    "IngestResult",
    "ItemError",
    "ManifestError",
    "Utterance",
    "ValidationConfig",
    "get_adapter",
    "ingest",
    "iter_manifest",
    "manifest_bytes",
    "open_source",
    "parse_manifest_bytes",
    "read_manifest",
    "write_manifest",
]
