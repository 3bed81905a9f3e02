"""One behaviour suite for every Store backend: a local folder and a real SeaweedFS S3 server."""

from __future__ import annotations

import os

import pytest

from emoflow.storage import (
    ObjectInfo,
    StoreKeyError,
    StoreKeyInvalid,
    fetch_to_local,
    open_store,
    read_uri,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "store")
    return request.getfixturevalue("s3_store")


def test_bytes_round_trip_and_overwrite(store):
    store.put_bytes("a/b/c.bin", b"\x00\x01hello")
    assert store.get_bytes("a/b/c.bin") == b"\x00\x01hello"
    store.put_bytes("a/b/c.bin", b"new")
    assert store.get_bytes("a/b/c.bin") == b"new"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    assert store.stat("empty").size == 0


def test_missing_key_error_names_the_key(store):
    with pytest.raises(StoreKeyError) as ei:
        store.get_bytes("no/such/key.json")
    assert isinstance(ei.value, KeyError)
    assert ei.value.key == "no/such/key.json"
    assert "no/such/key.json" in str(ei.value)
    for call in (lambda: store.stat("nope.txt"), lambda: store.get_file("nope.txt", "/tmp/never-written")):
        with pytest.raises(StoreKeyError, match="nope.txt"):
            call()
    assert not os.path.exists("/tmp/never-written")


def test_exists_list_stat_delete(store):
    keys = ["ab", "a/2.txt", "a/1.txt", "a/sub/3.txt", "b/4.txt"]
    for i, k in enumerate(keys):
        store.put_bytes(k, b"x" * (i + 1))
    assert store.list() == sorted(keys)
    assert store.list("a/") == ["a/1.txt", "a/2.txt", "a/sub/3.txt"]
    assert store.list("a") == ["a/1.txt", "a/2.txt", "a/sub/3.txt", "ab"]  # string prefix, as in S3
    assert store.list("a/sub/") == ["a/sub/3.txt"]
    assert store.list("zzz/") == []
    assert store.exists("a/1.txt") and not store.exists("a/9.txt") and not store.exists("a")
    info = store.stat("a/sub/3.txt")
    assert isinstance(info, ObjectInfo)
    assert (info.key, info.size) == ("a/sub/3.txt", 4)
    assert info.mtime > 1.6e9 and info.etag
    store.delete("a/1.txt")
    assert not store.exists("a/1.txt")
    assert "a/1.txt" not in store.list()
    with pytest.raises(StoreKeyError, match="a/1.txt"):
        store.delete("a/1.txt")
    store.delete("a/1.txt", missing_ok=True)


def test_files_round_trip_large(store, tmp_path):
    # 6 MiB + a bit: over the 5 MiB multipart threshold of the S3 SDK.
    data = os.urandom(6 * 1024 * 1024 + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.put_file("blobs/big.bin", src)
    assert store.stat("blobs/big.bin").size == len(data)
    dest = tmp_path / "out" / "deep" / "big.bin"
    assert store.get_file("blobs/big.bin", dest) == dest
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]  # no temp files left
    assert store.get_bytes("blobs/big.bin") == data


def test_put_file_missing_source_names_it(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        store.put_file("x.wav", tmp_path / "missing.wav")
    assert not store.exists("x.wav")


@pytest.mark.parametrize(
    "key", ["../escape.txt", "a/../../b", "/etc/passwd", "a//b", "a/./b", "", "dir/", "a\\..\\b", ".."]
)
def test_path_escape_and_bad_keys_rejected(store, key, tmp_path):
    with pytest.raises(StoreKeyInvalid):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreKeyInvalid):
        store.get_bytes(key)
    with pytest.raises(StoreKeyInvalid):
        store.exists(key)
    assert not (tmp_path / "escape.txt").exists()


def test_bad_list_prefix_rejected(store):
    with pytest.raises(StoreKeyInvalid, match=r"\.\."):
        store.list("../")


def test_bytes_type_checked(store):
    with pytest.raises(TypeError, match="k.txt"):
        store.put_bytes("k.txt", "not bytes")


def test_json_helpers(store):
    store.put_json("m/meta.json", {"b": 1, "a": [1, 2]})
    assert store.get_json("m/meta.json") == {"a": [1, 2], "b": 1}
    store.put_bytes("m/bad.json", b"{not json")
    with pytest.raises(Exception, match="bad.json"):
        store.get_json("m/bad.json")


def test_uri_helpers_read_back(store, tmp_path):
    store.put_bytes("d/e.txt", b"payload")
    uri = store.uri("d/e.txt")
    assert uri.startswith(("file:///", "s3://"))
    assert uri.endswith("/d/e.txt")
    assert read_uri(uri) == b"payload"
    out = fetch_to_local(uri, tmp_path / "f" / "e.txt")
    assert out.read_bytes() == b"payload"
    with pytest.raises(StoreKeyError, match="d/missing.txt"):
        read_uri(store.uri("d/missing.txt"))
    # The root URI reopens the same store.
    assert open_store(store.uri()).get_bytes("d/e.txt") == b"payload"


def test_put_if_absent_creates_once(store):
    assert store.put_bytes_if_absent("claims/v1", b"first") is True
    assert store.put_bytes_if_absent("claims/v1", b"second") is False
    assert store.get_bytes("claims/v1") == b"first"
    assert store.list("claims/") == ["claims/v1"]


def test_put_if_absent_concurrent_single_winner(store):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as ex:
        wins = list(ex.map(lambda i: store.put_bytes_if_absent("race/key", str(i).encode()), range(8)))
    assert wins.count(True) == 1
    assert store.get_bytes("race/key") == str(wins.index(True)).encode()
