"""LocalStore specifics: atomic writes, temp names hidden, URIs and path handling."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from emoflow.storage import (LocalStore, StoreError, StoreKeyError, fetch_prefix_once, fetch_to_local, open_store,
                             read_uri, split_uri)
from emoflow.storage.base import TMP_MARKER
from emoflow.storage.local import atomic_write


def test_open_store_forms(tmp_path):
    for uri in (str(tmp_path), tmp_path.as_uri(), f"file://localhost{tmp_path}"):
        s = open_store(uri)
        assert isinstance(s, LocalStore) and s.root == tmp_path.resolve()
    with pytest.raises(StoreError, match="gs://"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="otherhost"):
        open_store("file://otherhost/data")
    with pytest.raises(TypeError, match="s3://"):
        open_store(tmp_path, endpoint="127.0.0.1:1")


def test_failed_write_leaves_old_content_and_no_temp(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("k/v.bin", b"old")

    def half_then_fail(f):
        f.write(b"partial-new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(store.root / "k" / "v.bin", half_then_fail)
    assert store.get_bytes("k/v.bin") == b"old"
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["v.bin"]


def test_failed_put_file_leaves_nothing(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "s")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)

    def boom(fin, fout, n):
        fout.write(b"xx")
        raise OSError("read error")

    monkeypatch.setattr("emoflow.storage.local.shutil.copyfileobj", boom)
    with pytest.raises(OSError, match="read error"):
        store.put_file("a/new.bin", src)
    assert not store.exists("a/new.bin")
    assert store.list() == []
    assert list((tmp_path / "s" / "a").iterdir()) == []


def test_temp_names_never_listed(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/real.txt", b"1")
    (tmp_path / "a" / f".real.txt{TMP_MARKER}abc").write_bytes(b"half")
    assert store.list() == ["a/real.txt"]
    with pytest.raises(StoreError, match="reserved"):
        store.put_bytes(f"a/x{TMP_MARKER}1", b"")


def test_readers_never_see_partial_objects(tmp_path):
    store = LocalStore(tmp_path)
    size = 1 << 20
    store.put_bytes("hot.bin", b"a" * size)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            d = store.get_bytes("hot.bin")
            if len(d) != size or d.count(d[:1]) != size:
                bad.append(len(d))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            store.put_bytes("hot.bin", (b"b" if i % 2 else b"a") * size)
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert store.list() == ["hot.bin"]


def test_write_over_folder_is_clear(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("d/x", b"1")
    with pytest.raises(StoreError, match="folder"):
        store.put_bytes("d", b"2")
    with pytest.raises(StoreKeyError):
        store.get_bytes("d")


def test_uri_is_file_uri_and_escapes(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("sp ace/ü.txt", b"u")
    uri = store.uri("sp ace/ü.txt")
    assert uri.startswith("file:///") and " " not in uri
    assert read_uri(uri) == b"u"
    assert read_uri(str(tmp_path / "sp ace" / "ü.txt")) == b"u"


def test_split_uri_and_fetch(tmp_path):
    assert split_uri("s3://bkt/a/b/c.wav") == ("s3://bkt", "a/b/c.wav")
    f = tmp_path / "x.wav"
    f.write_bytes(b"RIFF")
    assert split_uri(str(f)) == (tmp_path.resolve().as_uri(), "x.wav")
    assert split_uri(f.as_uri()) == (tmp_path.resolve().as_uri(), "x.wav")
    for bad in ("s3://bkt", "s3://bkt/dir/", "s3:///key", str(tmp_path)):
        with pytest.raises(StoreError):
            split_uri(bad)
    out = fetch_to_local(f, tmp_path / "copy" / "y.wav")
    assert out.read_bytes() == b"RIFF"
    with pytest.raises(StoreKeyError, match="nothere.wav"):
        fetch_to_local(tmp_path / "nothere.wav", tmp_path / "z.wav")
    assert not Path(tmp_path / "z.wav").exists()


def test_no_accepted_key_escapes_the_root(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from emoflow.storage import StoreKeyInvalid, check_key

    store = LocalStore(tmp_path / "root")
    parts = st.sampled_from(["..", ".", "", "a", "b.txt", "/", "\\", "..a", "a..", "~", "x\x00"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(parts, min_size=1, max_size=6).map("".join))
    def check(key):
        try:
            check_key(key)
        except StoreKeyInvalid:
            return
        path = store._path(key).resolve()
        assert store.root in path.parents, (key, path)

    check()


def test_fetch_prefix_once_copies_a_folder_once_and_names_an_empty_prefix(tmp_path):
    src = open_store(str(tmp_path / "mirror"))
    src.put_bytes("model/config.json", b"{}")
    src.put_bytes("model/weights.bin", b"w" * 10)
    target = fetch_prefix_once(src.uri("model"), tmp_path / "cache")
    assert (target / "config.json").read_bytes() == b"{}" and (target / ".complete").exists()
    src.put_bytes("model/weights.bin", b"changed")  # a complete copy is not fetched again
    assert (fetch_prefix_once(src.uri("model"), tmp_path / "cache") / "weights.bin").read_bytes() == b"w" * 10
    with pytest.raises(StoreKeyError, match="no files under"):
        fetch_prefix_once(src.uri("nothing"), tmp_path / "other")
    assert not (tmp_path / "other" / ".complete").exists()

