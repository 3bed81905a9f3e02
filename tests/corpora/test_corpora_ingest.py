"""The ingest step: store layout, content addressing, idempotency, duplicates, summary counts."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import pytest

from corpora.corpus_builders import build_csv, build_demo, build_ravdess, write_wav
from emoflow.corpora import ingest, read_manifest
from emoflow.storage import open_store


class CountingStore:
    """Wraps a Store and records every write (to prove a re-run uploads nothing)."""

    def __init__(self, inner):
        self.inner = inner
        self.writes: list[str] = []

    def put_bytes(self, key, data):
        self.writes.append(key)
        return self.inner.put_bytes(key, data)

    def put_file(self, key, path):
        self.writes.append(key)
        return self.inner.put_file(key, path)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_store_layout_and_content_addressed_audio(tmp_path):
    build_ravdess(tmp_path / "rav", actors=(1,))
    store = open_store(tmp_path / "store")
    r = ingest("ravdess", str(tmp_path / "rav"), store)
    folder = r.manifest_key.rsplit("/", 1)[0]
    assert folder.startswith("manifests/ravdess/") and len(folder.split("/")[-1]) == 16
    assert {k.rsplit("/", 1)[1] for k in store.list(folder + "/")} == {
        "manifest.jsonl", "quarantine.jsonl", "excluded.jsonl", "summary.json"}
    assert r.quarantine_key == f"{folder}/quarantine.jsonl" and r.manifest_uri == store.uri(r.manifest_key)
    for u in r.utterances:
        src = (tmp_path / "rav" / u.extra["source_path"]).read_bytes()
        sha = hashlib.sha256(src).hexdigest()
        key = f"audio/ravdess/{sha[:2]}/{sha}.wav"
        assert u.audio == store.uri(key) and store.get_bytes(key) == src  # bytes unchanged, no resampling
    assert read_manifest(io.StringIO(store.get_bytes(r.manifest_key).decode())) == r.utterances
    summary = json.loads(store.get_bytes(r.summary_key))
    assert summary == r.summary and summary["accepted"] == 6


def test_rerun_uploads_nothing_and_writes_identical_manifest(tmp_path):
    build_ravdess(tmp_path / "rav", actors=(1, 2))
    store = CountingStore(open_store(tmp_path / "store"))
    r1 = ingest("ravdess", str(tmp_path / "rav"), store)
    first = list(store.writes)
    assert r1.uploaded == 12 and len(first) == 12 + 4
    m1 = store.get_bytes(r1.manifest_key)
    store.writes.clear()
    r2 = ingest("ravdess", str(tmp_path / "rav"), store)
    assert store.writes == [] and r2.uploaded == 0 and r2.written == []
    assert r2.manifest_key == r1.manifest_key and store.get_bytes(r2.manifest_key) == m1
    # a changed corpus gets a new content hash; unchanged audio is still not re-uploaded
    (tmp_path / "rav" / "Actor_01" / "03-01-01-01-01-01-01.wav").unlink()
    r3 = ingest("ravdess", str(tmp_path / "rav"), store)
    assert r3.manifest_key != r1.manifest_key and r3.uploaded == 0
    assert [k for k in store.writes if k.startswith("audio/")] == []


def test_copy_audio_false_references_the_source(tmp_path):
    build_demo(tmp_path / "demo")
    store = CountingStore(open_store(tmp_path / "store"))
    r = ingest("demo", str(tmp_path / "demo"), store, copy_audio=False)
    assert all(u.audio == (tmp_path / "demo" / u.extra["source_path"]).resolve().as_uri() for u in r.utterances)
    assert not [k for k in store.writes if k.startswith("audio/")]


def test_byte_identical_audio_reported_and_stored_once(tmp_path):
    root = build_ravdess(tmp_path / "rav", actors=(7,), emotions=("03",)) and tmp_path / "rav"
    a = root / "Actor_07" / "03-01-03-01-02-01-07.wav"
    shutil.copy(a, root / "Actor_07" / "03-01-03-01-02-02-07.wav")
    store = open_store(tmp_path / "store")
    r = ingest("ravdess", str(root), store)
    assert r.summary["duplicate_audio"] == [{
        "sha256": hashlib.sha256(a.read_bytes()).hexdigest(),
        "files": ["Actor_07/03-01-03-01-02-01-07.wav", "Actor_07/03-01-03-01-02-02-07.wav"],
        "ids": ["03-01-03-01-02-01-07", "03-01-03-01-02-02-07"]}]
    assert r.uploaded == 2 and len(r.utterances) == 3  # both kept, one object stored


def test_summary_counts_and_settings(tmp_path):
    root = build_csv(tmp_path / "c", rows=["wav/a.wav,Hi.,happy,s1,g1", "wav/b.wav,Yo.,sad,s2,g2",
                                            "wav/sub/c.flac,No.,happy,s1,g1", "wav/none.wav,?,sad,s3,g3"])
    write_wav(root / "wav/long.wav", seconds=1.0)
    r = ingest("csv", str(root), open_store(tmp_path / "s"), max_bad_share=0.5, min_duration=0.2, max_duration=0.5)
    s = r.summary
    assert (s["in"], s["accepted"], s["quarantined"], s["excluded"]) == (4, 3, 1, 0)
    assert s["quarantine_by_reason"] == {"missing_file": 1}
    assert s["labels"] == {"happy": 2, "sad": 1} and s["speakers"] == 2 and s["sessions"] == 2
    assert s["formats"] == {"flac": 1, "wav": 2} and s["sample_rates"] == {"16000": 3}
    assert s["hours"] == pytest.approx(0.9 / 3600, abs=1e-4)
    assert s["settings"]["min_duration"] == 0.2 and s["settings"]["copy_audio"] is True


def test_store_given_as_uri(tmp_path):
    build_demo(tmp_path / "demo")
    r = ingest("demo", f"file://{tmp_path / 'demo'}", str(tmp_path / "store"))
    assert open_store(tmp_path / "store").exists(r.manifest_key)


def test_demo_adapter_reads_the_synthetic_generator_output(tmp_path):
    from emoflow.corpora.synthetic import generate_demo_corpus

    made = generate_demo_corpus(tmp_path / "demo", sessions=2, speakers_per_session=1, utterances_per_speaker=4)
    r = ingest("demo", str(tmp_path / "demo"), open_store(tmp_path / "store"))
    assert r.quarantine == [] and [u.id for u in r.utterances] == [u.id for u in made]
    assert {u.session for u in r.utterances} == {u.session for u in made}
    assert all(u.extra["sample_rate"] == 16000 and u.label == m.label for u, m in zip(r.utterances, made))
