"""The MELD adapter on the real shared text annotations (train + dev, no media); skipped when absent."""

from __future__ import annotations

import pytest

from conftest import SHARED_DATA
from emoflow.corpora import ingest
from emoflow.storage import open_store

MELD = SHARED_DATA / "meld"

pytestmark = [pytest.mark.realdata, pytest.mark.skipif(not MELD.is_dir(), reason=f"{MELD} not present")]


def test_real_meld_text_only(tmp_path):
    r = ingest("meld", str(MELD), open_store(tmp_path / "store"))
    s = r.summary
    assert (s["in"], s["accepted"], s["quarantined"]) == (11098, 11098, 0)
    assert s["splits"] == {"train": 9989, "dev": 1109} and s["text_only"] == 11098
    assert len({u.dialogue for u in r.utterances if u.split == "train"}) == 1038
    assert len({u.dialogue for u in r.utterances if u.split == "dev"}) == 114
    first = r.utterances[0]
    assert first.id == "train_dia0_utt0" and "company’s transition" in first.text
    # dialogue order: utterance indices rise within each dialogue
    last = {}
    for u in r.utterances:
        assert u.extra["utterance_index"] > last.get(u.dialogue, -1)
        last[u.dialogue] = u.extra["utterance_index"]
    assert not any("â€" in u.text for u in r.utterances)
