"""Ingest from and to S3 on the real SeaweedFS server (tests/s3_fixture.py)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from corpora.corpus_builders import build_iemocap, build_mosei, build_ravdess
from emoflow.corpora import CorpusError, ingest, read_manifest
from emoflow.storage import read_uri

pytestmark = pytest.mark.slow


def upload_tree(s3_server, local: Path) -> str:
    """Copy a local corpus folder to a fresh prefix of the test bucket; return its s3:// URI."""
    prefix = f"corpora-{uuid.uuid4().hex[:8]}"
    store = s3_server.store(prefix)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            store.put_file(p.relative_to(local).as_posix(), p)
    return f"s3://{s3_server.bucket}/{prefix}"


def test_ingest_s3_source_to_s3_store_idempotent(tmp_path, s3_server, s3_store):
    build_ravdess(tmp_path / "rav", actors=(1, 2))
    src = upload_tree(s3_server, tmp_path / "rav")
    r = ingest("ravdess", src, s3_store)
    assert len(r.utterances) == 12 and r.quarantine == [] and r.uploaded == 12
    u = r.utterances[0]
    sha = u.extra["sha256"]
    assert u.audio == s3_store.uri(f"audio/ravdess/{sha[:2]}/{sha}.wav") and u.audio.startswith("s3://")
    assert read_uri(u.audio) == (tmp_path / "rav" / u.extra["source_path"]).read_bytes()
    assert read_manifest(io.StringIO(s3_store.get_bytes(r.manifest_key).decode())) == r.utterances
    r2 = ingest("ravdess", src, s3_store)
    assert r2.written == [] and r2.uploaded == 0 and r2.manifest_key == r.manifest_key


def test_ingest_s3_source_segments_and_hdf5_labels(tmp_path, s3_server, s3_store):
    build_mosei(tmp_path / "m")
    src = upload_tree(s3_server, tmp_path / "m")
    r = ingest("mosei", src, s3_store, copy_audio=False)
    assert sorted(u.id for u in r.utterances) == ["vidA[0]", "vidA[1]", "vidB[0]"]
    assert all(u.audio.startswith(src + "/Raw/Audio/Full/WAV_16000/") for u in r.utterances)
    assert not s3_store.list("audio/")


def test_ingest_local_source_to_s3_store_and_bad_source(tmp_path, s3_server, s3_store):
    build_iemocap(tmp_path)
    r = ingest("iemocap", str(tmp_path / "IEMOCAP_full_release"), s3_store)
    assert len(r.utterances) == 8 and s3_store.exists(r.summary_key)
    with pytest.raises(CorpusError, match="empty or does not exist"):
        ingest("ravdess", f"s3://{s3_server.bucket}/no-such-prefix-{uuid.uuid4().hex[:6]}", s3_store)
