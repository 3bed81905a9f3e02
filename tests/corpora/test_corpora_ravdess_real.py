"""The RAVDESS adapter on the real shared data (actors 01-18); skipped when it is absent."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from conftest import SHARED_DATA
from emoflow.corpora import ingest
from emoflow.storage import open_store

RAVDESS = SHARED_DATA / "ravdess"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"{RAVDESS} not present"),
]


def test_real_ravdess_ingest(tmp_path):
    r = ingest("ravdess", str(RAVDESS), open_store(tmp_path / "store"), copy_audio=False)
    s = r.summary
    assert (s["in"], s["accepted"], s["quarantined"], s["excluded"]) == (1080, 1080, 0, 0)
    assert s["speakers"] == 18 and s["sessions"] == 18
    assert set(Counter(u.speaker for u in r.utterances).values()) == {60}
    assert s["labels"] == {"neutral": 72, **{e: 144 for e in (
        "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")}}
    assert [d["ids"] for d in s["duplicate_audio"]] == [["03-01-03-01-02-01-07", "03-01-03-01-02-02-07"]]
    # labels, speakers, texts and gender agree with the distributed metadata.csv
    meta = {row["path"].rsplit("/", 1)[1].rsplit(".", 1)[0]: row
            for row in csv.DictReader(open(RAVDESS / "metadata.csv", encoding="utf-8"))}
    for u in r.utterances:
        m = meta[u.id]
        assert (u.label, u.speaker, u.text, u.extra["gender"]) == (
            m["emotion"], m["speaker"], m["statement_text"], m["gender"]), u.id
        assert u.extra["duration"] == pytest.approx(float(m["duration_s"]), abs=0.01)
    # the soft files (peak below -38 dBFS) are kept, not taken for silence
    assert min(u.extra["peak_dbfs"] for u in r.utterances) < -38
