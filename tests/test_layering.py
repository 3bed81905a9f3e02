"""The library imports only downward: config/storage/audiofile → corpora → audio/text → models →
training/evaluation → registry → serving/monitoring → steps/cli."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "emoflow"
LAYER = {
    "config": 0, "assets": 0, "storage": 0, "images": 0, "runconfig": 0, "work": 0, "__init__": 0,
    "audiofile": 0,  # the one bounded audio decoder, below corpora (ingest), audio (features) and serving
    "corpora": 1,
    "audio": 2, "text": 2,
    "models": 3,
    "training": 4, "evaluation": 4,
    "registry": 5,
    "serving": 6, "monitoring": 6,
    "steps": 7, "cli": 7, "doctor": 7,
}


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_imports_only_go_down():
    bad = []
    for path in SRC.rglob("*.py"):
        mine = package_of(path)
        assert mine in LAYER, f"{path}: package {mine!r} has no layer"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "emoflow" or len(parts) < 2:
                    continue
                if LAYER[parts[1]] > LAYER[mine]:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)
