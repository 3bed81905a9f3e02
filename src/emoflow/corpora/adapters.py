"""The corpus adapter registry: ``ADAPTERS`` (name -> adapter class) and ``get_adapter``."""

from __future__ import annotations

from emoflow.corpora.base import Adapter, CorpusError
from emoflow.corpora.cremad import CremadAdapter
from emoflow.corpora.csv_manifest import CsvManifestAdapter, DemoAdapter
from emoflow.corpora.emodb import EmodbAdapter
from emoflow.corpora.iemocap import IemocapAdapter
from emoflow.corpora.meld import MeldAdapter
from emoflow.corpora.mosei import MoseiAdapter
from emoflow.corpora.ravdess import RavdessAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls
    for cls in (IemocapAdapter, MeldAdapter, MoseiAdapter, RavdessAdapter, CremadAdapter,
                EmodbAdapter, CsvManifestAdapter, DemoAdapter)
}
ALIASES = {"crema-d": "cremad", "crema_d": "cremad", "cmu-mosei": "mosei", "cmu_mosei": "mosei",
           "emo-db": "emodb", "jsonl": "csv", "manifest": "csv", "synthetic": "demo"}


def get_adapter(name: str) -> Adapter:
    """A fresh adapter for a corpus name (case-insensitive; a few aliases such as 'crema-d')."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ADAPTERS:
        raise CorpusError(f"unknown corpus {name!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[key]()
