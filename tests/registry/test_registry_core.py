"""Registry behaviour on a local store and on the real SeaweedFS S3 server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from emoflow.registry import Registry, RegistryError, RegistryIntegrityError, RegistryNotFound
from emoflow.storage import open_store


@pytest.fixture(params=["local", "s3"])
def reg(request, tmp_path):
    if request.param == "local":
        return Registry(open_store(tmp_path / "store"))
    return Registry(request.getfixturevalue("s3_store"))


def _files(tag: str, tmp_path):
    w = tmp_path / f"weights-{tag}.bin"
    w.write_bytes(tag.encode() * 1000)
    folder = tmp_path / f"plots-{tag}"
    folder.mkdir()
    (folder / "cm.png").write_bytes(b"\x89PNG" + tag.encode())
    return {"model.safetensors": w, "labels.json": json.dumps(["ang", "hap"]).encode(), "plots": folder}


def test_register_layout_manifest_and_resolve(reg, tmp_path):
    v1 = reg.register("emo", _files("a", tmp_path), {"pipeline_run_id": "run-1", "ua": 0.5}, aliases=["production"])
    assert v1 == "v1"
    keys = reg.store.list("registry/emo/")
    assert "registry/emo/v1/model.safetensors" in keys
    assert "registry/emo/v1/plots/cm.png" in keys
    assert "registry/emo/v1/manifest.json" in keys
    assert "registry/emo/aliases/production.json" in keys
    m = reg.manifest("emo", "v1")
    assert m["pipeline_run_id"] == "run-1" and m["metadata"]["ua"] == 0.5
    assert m["emoflow_version"] and m["created"].endswith("+00:00")
    assert m["files"]["model.safetensors"]["size"] == 1000
    assert len(m["files"]["labels.json"]["sha256"]) == 64
    assert set(m["files"]) == {"model.safetensors", "labels.json", "plots/cm.png"}

    v2 = reg.register("emo", _files("b", tmp_path), {"pipeline_run_id": "run-2"}, aliases=["candidate"])
    assert v2 == "v2"
    assert reg.resolve("emo") == ("emo", "v1")  # production wins over latest
    assert reg.resolve("emo@candidate") == ("emo", "v2")
    assert reg.resolve("emo@v2") == ("emo", "v2")
    assert reg.list_models() == ["emo"]
    assert reg.list_versions("emo") == ["v1", "v2"]
    assert reg.list_aliases("emo") == {"production": "v1", "candidate": "v2"}
    assert reg.version_uri("emo", "v2") == reg.store.uri("registry/emo/v2")


def test_resolve_without_production_takes_latest_and_errors_are_clear(reg):
    reg.register("m", {"a": b"1"})
    reg.register("m", {"a": b"2"})
    assert reg.resolve("m") == ("m", "v2")
    with pytest.raises(RegistryNotFound, match="no version v9"):
        reg.resolve("m@v9")
    with pytest.raises(RegistryNotFound, match="alias 'gold'"):
        reg.resolve("m@gold")
    with pytest.raises(RegistryNotFound, match="'ghost'"):
        reg.resolve("ghost")
    for bad in ("", "m@", "../x", "a/b", "m@../x"):
        with pytest.raises(RegistryError):
            reg.resolve(bad)


def test_download_round_trip_and_tamper_detected(reg, tmp_path):
    files = _files("c", tmp_path)
    v = reg.register("emo", files)
    out = reg.download(f"emo@{v}", tmp_path / "dl")
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"].read_bytes()
    assert (out / "plots" / "cm.png").read_bytes() == b"\x89PNGc"
    assert json.loads((out / "manifest.json").read_text())["version"] == v

    # Tamper with one stored file (same size, different bytes).
    reg.store.put_bytes(f"registry/emo/{v}/plots/cm.png", b"\x89PNGX")
    with pytest.raises(RegistryIntegrityError, match="plots/cm.png") as ei:
        reg.download("emo", tmp_path / "dl2")
    assert ei.value.file == "plots/cm.png"
    assert not (tmp_path / "dl2" / "plots" / "cm.png").exists()
    with pytest.raises(RegistryIntegrityError, match="plots/cm.png"):
        reg.verify(f"emo@{v}")
    # A tampered version cannot be promoted.
    with pytest.raises(RegistryIntegrityError, match="cm.png"):
        reg.promote("emo", v)
    # Deleted file: named too.
    reg.store.delete(f"registry/emo/{v}/labels.json")
    with pytest.raises(RegistryIntegrityError, match="labels.json"):
        reg.download("emo", tmp_path / "dl3")


def test_versions_are_immutable(reg):
    reg.register("emo", {"w": b"1"})
    with pytest.raises(RegistryError, match="immutable"):
        reg.register("emo", {"w": b"other"}, version="v1")
    assert reg.store.get_bytes("registry/emo/v1/w") == b"1"
    assert reg.register("emo", {"w": b"2"}, version="v5") == "v5"
    assert reg.register("emo", {"w": b"3"}) == "v6"


def test_bad_registrations_named(reg, tmp_path):
    with pytest.raises(RegistryError, match="non-empty"):
        reg.register("emo", {})
    with pytest.raises(RegistryError, match="missing.bin"):
        reg.register("emo", {"w": tmp_path / "missing.bin"})
    with pytest.raises(RegistryError, match="reserved"):
        reg.register("emo", {"manifest.json": b"{}"})
    with pytest.raises(RegistryError, match=r"\.\./x"):
        reg.register("emo", {"../x": b"1"})
    with pytest.raises(RegistryError, match="model name"):
        reg.register("bad/name", {"w": b"1"})
    with pytest.raises(RegistryError, match="JSON"):
        reg.register("emo", {"w": b"1"}, metadata={"x": object()})
    with pytest.raises(RegistryError, match="reserved"):
        reg.register("emo", {"w": b"1"}, aliases=["v2"])
    with pytest.raises(RegistryError, match="int"):
        reg.register("emo", {"w": 3})
    assert reg.list_models() == []  # nothing half-registered by validation failures


def test_promote_and_rollback_walk_history(reg):
    for i in range(3):
        reg.register("emo", {"w": str(i).encode()})
    with pytest.raises(RegistryNotFound, match="no alias 'production'"):
        reg.rollback("emo")
    reg.promote("emo", "v1")
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback("emo")
    reg.promote("emo", "v2")
    reg.promote("emo", "v3")
    assert reg.alias_history("emo") == ["v1", "v2"]
    assert reg.rollback("emo") == "v2"
    assert reg.resolve("emo@production") == ("emo", "v2")
    assert reg.rollback("emo") == "v1"
    assert reg.get_alias("emo") == "v1"
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback("emo")
    with pytest.raises(RegistryNotFound, match="no version v7"):
        reg.promote("emo", "v7")
    assert reg.get_alias("emo", "candidate") is None


def test_incomplete_version_ignored_but_shown(reg):
    reg.register("emo", {"w": b"1"}, aliases=["production"])
    # A registration that died after its first upload: claim + file, no manifest.
    reg.store.put_bytes("registry/emo/v2/.claim", b"{}")
    reg.store.put_bytes("registry/emo/v2/w", b"half")
    assert reg.list_versions("emo") == ["v1"]
    assert reg.list_versions("emo", include_incomplete=True) == ["v1", "v2"]
    assert reg.resolve("emo") == ("emo", "v1")
    with pytest.raises(RegistryNotFound, match="incomplete"):
        reg.resolve("emo@v2")
    with pytest.raises(RegistryNotFound, match="incomplete"):
        reg.promote("emo", "v2")
    shown = reg.show("emo")
    assert shown["versions"] == ["v1"] and shown["incomplete"] == ["v2"]
    assert shown["aliases"] == {"production": "v1"}
    v2 = reg.show("emo@v2")
    assert v2["complete"] is False and v2["files_present"] == ["w"]
    # The number is never reused.
    assert reg.register("emo", {"w": b"3"}) == "v3"
    reg.register("emo", {"w": b"4"}, {"pipeline_run": "kfp-123", "ua": 0.7})
    assert reg.show("emo@v4")["pipeline_run_id"] == "kfp-123"
    assert reg.show("emo@v4")["metadata"]["ua"] == 0.7
    full = reg.show("emo@production")
    assert full["complete"] and full["version"] == "v1" and full["aliases"] == ["production"]


def test_concurrent_registrations_get_distinct_versions(reg):
    with ThreadPoolExecutor(4) as ex:
        versions = list(ex.map(lambda i: reg.register("emo", {"w": bytes([i])}), range(4)))
    assert sorted(versions, key=lambda v: int(v[1:])) == ["v1", "v2", "v3", "v4"]
    for i, v in enumerate(versions):
        assert reg.store.get_bytes(f"registry/emo/{v}/w") == bytes([i])


def test_registry_from_uri_and_custom_root(tmp_path):
    reg = Registry(str(tmp_path / "s"), root="models/reg")
    reg.register("emo", {"w": b"1"}, aliases=["production"])
    assert reg.store.exists("models/reg/emo/v1/manifest.json")
    assert reg.show("emo")["versions"] == ["v1"]


def test_corrupted_upload_caught_before_manifest_and_alias(reg, monkeypatch):
    reg.register("emo", {"w": b"good"}, aliases=["production"])
    real_put = reg.store.put_bytes

    def flaky_put(key, data):
        real_put(key, data[:-1] + b"!" if key.endswith("/w") else data)

    monkeypatch.setattr(reg.store, "put_bytes", flaky_put)
    with pytest.raises(RegistryError, match="verifying file 'w'.*sha256") as ei:
        reg.register("emo", {"w": b"next", "x": b"ok"}, aliases=["production"])
    assert isinstance(ei.value.__cause__, RegistryIntegrityError)
    monkeypatch.undo()
    assert not reg.store.exists("registry/emo/v2/manifest.json")
    assert reg.resolve("emo@production") == ("emo", "v1")
    assert reg.show("emo")["incomplete"] == ["v2"]
