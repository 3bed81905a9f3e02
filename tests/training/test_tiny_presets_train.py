"""Every architecture's `tiny` preset trains one epoch on the synthetic demo corpus (LOSO + final fit)."""

import json

import pytest

from emoflow.models import list_presets, load_model
from emoflow.training.run import run_training

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", sorted({a for a, name in list_presets() if name == "tiny"}))
def test_tiny_preset_trains_one_epoch(demo, arch):
    utts, store, root = demo
    out = root / arch
    summary = run_training(utts, store, arch, "tiny", out, epochs=1, progress=False)
    assert set(summary["folds"]) == {"fold1-S1", "fold2-S2", "fold3-S3"}
    tested = sorted(i for f in summary["folds"].values() for i in f["ids"])
    assert tested == sorted(u.id for u in utts)  # every utterance tested exactly once
    for fold in summary["folds"].values():
        assert not set(fold["test_groups"]) & set(fold["val_groups"])
        assert fold["history"][0]["loss"] > 0
    model = load_model(out / "model")
    assert list(model.labels) == summary["labels"]
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["final_epochs"] == 1
