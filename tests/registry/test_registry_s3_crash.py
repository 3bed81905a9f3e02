"""Alias atomicity when the S3 server dies in the middle of a registration."""

from __future__ import annotations

import pytest

from emoflow.registry import Registry, RegistryError


def test_killed_server_mid_registration_keeps_previous_alias(s3_server, s3_store, tmp_path):
    reg = Registry(s3_store)
    reg.register("emo", {"w.bin": b"old" * 100, "cfg.json": b"{}"}, aliases=["production"])
    assert reg.resolve("emo@production") == ("emo", "v1")

    calls = []

    def crash_after_first(file, done, total):
        calls.append(file)
        if done == 1:
            s3_server.kill()

    files = {"a.bin": b"new-a" * 100, "b.bin": b"new-b" * 100, "c.bin": b"new-c"}
    try:
        with pytest.raises(RegistryError) as ei:
            reg.register("emo", files, aliases=["production"], on_file_written=crash_after_first)
    finally:
        if not s3_server.alive():
            s3_server.start()
    msg = str(ei.value)
    assert "'emo'" in msg and "v2" in msg and "uploading file 'b.bin'" in msg
    assert s3_server.endpoint in msg and "no alias was changed" in msg
    assert calls == ["a.bin"]

    # After the restart the old version is still production; v2 is incomplete.
    assert reg.resolve("emo@production") == ("emo", "v1")
    assert reg.resolve("emo") == ("emo", "v1")
    assert reg.list_versions("emo") == ["v1"]
    shown = reg.show("emo")
    assert shown["incomplete"] == ["v2"]
    assert reg.download("emo@production", tmp_path / "dl").joinpath("w.bin").read_bytes() == b"old" * 100
    # A retried registration gets a fresh number and moves the alias.
    assert reg.register("emo", files, aliases=["production"]) == "v3"
    assert reg.resolve("emo@production") == ("emo", "v3")
    assert reg.alias_history("emo") == ["v1"]


def test_server_dead_before_alias_write_leaves_alias(s3_server, s3_store, monkeypatch):
    """Files and manifest written, then the server dies: the alias still names the old version."""
    reg = Registry(s3_store)
    reg.register("emo", {"w": b"1"}, aliases=["production"])
    real_write = reg._write_alias

    def die_then_write(*a, **k):
        s3_server.kill()
        return real_write(*a, **k)

    monkeypatch.setattr(reg, "_write_alias", die_then_write)
    try:
        with pytest.raises(RegistryError, match="alias 'production' was not moved"):
            reg.register("emo", {"w": b"2"}, aliases=["production"])
    finally:
        s3_server.start()
    monkeypatch.undo()
    assert reg.resolve("emo@production") == ("emo", "v1")
    assert reg.list_versions("emo") == ["v1", "v2"]  # v2 is complete, only not promoted
    reg.promote("emo", "v2")
    assert reg.resolve("emo") == ("emo", "v2")
