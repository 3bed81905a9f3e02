"""`emoflow models ...` through argparse and the handler."""

from __future__ import annotations

import argparse
import io
import json
import re

from emoflow.registry import Registry
from emoflow.registry.cli import add_cli


def _run(argv, capsys=None):
    parser = argparse.ArgumentParser(prog="emoflow")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    rc = args.func(args, out=out)
    return rc, out.getvalue()


def test_cli_round_trip(tmp_path, capsys):
    store = str(tmp_path / "store")
    reg = Registry(store)
    reg.register("emo", {"w": b"1"}, {"pipeline_run_id": "r1"}, aliases=["production"])
    reg.register("emo", {"w": b"2"}, aliases=["candidate"])

    rc, out = _run(["models", "--store", store, "list"])
    assert rc == 0
    assert "emo" in out and "v1, v2" in out and "candidate=v2" in out and "production=v1" in out
    rc, out = _run(["models", "--store", store, "list", "--json"])
    assert json.loads(out) == [
        {"model": "emo", "versions": ["v1", "v2"], "aliases": {"candidate": "v2", "production": "v1"}}
    ]

    rc, out = _run(["models", "--store", store, "show", "emo@production"])
    shown = json.loads(out)
    assert rc == 0 and shown["version"] == "v1" and shown["manifest"]["pipeline_run_id"] == "r1"
    assert shown["pipeline_run_id"] == "r1" and shown["metadata"] == {"pipeline_run_id": "r1"}

    rc, out = _run(["models", "--store", store, "promote", "emo", "v2"])
    assert rc == 0 and "v1 -> v2" in out
    assert reg.resolve("emo") == ("emo", "v2")

    rc, out = _run(["models", "--store", store, "rollback", "emo"])
    assert rc == 0 and "v2 -> v1" in out
    assert reg.resolve("emo") == ("emo", "v1")

    rc, out = _run(["models", "--store", store, "rollback", "emo"])
    assert rc == 1
    assert "no previous version" in capsys.readouterr().err

    rc, _ = _run(["models", "--store", store, "promote", "emo", "v9"])
    assert rc == 1
    assert "v9" in capsys.readouterr().err


def test_cli_default_store_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFLOW_STORE", str(tmp_path / "envstore"))
    Registry(str(tmp_path / "envstore")).register("m", {"w": b"1"})
    rc, out = _run(["models", "list"])
    assert rc == 0 and out.startswith("m\t")
    monkeypatch.setenv("EMOFLOW_STORE", str(tmp_path / "empty"))
    rc, out = _run(["models", "list"])
    assert rc == 0 and "no models" in out


def test_models_presets_prints_parameter_counts(capsys):
    from emoflow.cli import main

    assert main(["models", "presets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^a1 +paper +109,968,590 ", out, re.M), out
    for arch in ("a1", "a2", "a3", "a4"):
        assert re.search(rf"^{arch} +tiny +[\d,]+ ", out, re.M), out
    header, *rows = out.strip().splitlines()
    column = header.index("params") + len("params")  # the counts end under their header
    assert all(re.match(r"[\d,]+$", row[:column].split()[-1]) for row in rows), out
