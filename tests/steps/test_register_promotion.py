"""Retraining flow (issue 8): register as `candidate`, promote to `production` only when it beats it.

A real registry in a temporary store; each "run" is two fake architectures' evaluation folders
(made by the real evaluate step from chosen fold predictions) and model folders."""

import json

import pytest

from emoflow import steps
from emoflow.registry import Registry
from emoflow.storage import open_store

LABELS = ["ang", "hap", "neu", "sad"]


def fake_run(root, name: str, ua_by_arch: dict[str, float]):
    """Model and evaluation folders of one pipeline run; each arch scores `ua` on both of 2 folds."""
    models, evaluations = [], []
    for arch, ua in ua_by_arch.items():
        correct = round(ua * 4)  # 4 utterances per fold, one per class: UA = correct / 4
        y_true = list(LABELS)
        y_pred = [lab if i < correct else LABELS[(i + 1) % 4] for i, lab in enumerate(LABELS)]
        folds = {f"fold{k}-S{k}": {"y_true": y_true, "y_pred": y_pred} for k in (1, 2)}
        pred = root / name / arch / "predictions.json"
        pred.parent.mkdir(parents=True)
        pred.write_text(json.dumps({"arch": arch, "labels": LABELS, "folds": folds, "preset": {"name": "tiny"}}))
        ev_dir = root / name / arch / "evaluation"
        summary = steps.evaluate(str(pred), str(ev_dir), corpus="demo")
        assert summary["metrics"]["mean"]["ua"] == pytest.approx(ua)
        model_dir = root / name / arch / "model"
        (model_dir / "model").mkdir(parents=True)
        (model_dir / "model" / "model.safetensors").write_bytes(f"{name}-{arch}-weights".encode())
        (model_dir / "model" / "config.json").write_text(json.dumps({"arch": arch}))
        (model_dir / "train.json").write_text(json.dumps({"arch": arch, "labels": LABELS}))
        models.append(str(model_dir))
        evaluations.append(str(ev_dir))
    return models, evaluations


def test_candidate_is_promoted_only_when_it_beats_production(tmp_path):
    store_uri = str(tmp_path / "store")
    registry = Registry(open_store(store_uri))

    # first run: nothing in production yet, registered directly as production (a2 wins)
    first = steps.register(*fake_run(tmp_path, "run1", {"a1": 0.5, "a2": 0.75}), store_uri, run_id="run1")
    assert (first["version"], first["winner"], first["promoted"]) == ("v1", "a2", True)
    assert registry.resolve("emoflow@production") == ("emoflow", "v1")
    assert registry.show("emoflow@production")["metadata"]["metric_value"] == pytest.approx(0.75)

    # second run, worse: registered and marked candidate, production unchanged, and the reason says why
    second = steps.register(*fake_run(tmp_path, "run2", {"a1": 0.25, "a2": 0.5}), store_uri,
                            alias="candidate", run_id="run2")
    assert (second["version"], second["winner"], second["promoted"]) == ("v2", "a2", False)
    assert registry.resolve("emoflow@candidate") == ("emoflow", "v2")
    assert registry.resolve("emoflow@production") == ("emoflow", "v1")
    assert "not promoted" in second["reason"]
    assert "ua=0.5" in second["reason"] and "production 0.75" in second["reason"]
    # the rejected version is kept, with its files
    assert registry.download("emoflow@v2", tmp_path / "dl2").joinpath(
        "model", "model.safetensors").read_bytes() == b"run2-a2-weights"

    # third run, better but not by the margin: still not promoted
    third = steps.register(*fake_run(tmp_path, "run3", {"a1": 1.0, "a2": 0.5}), store_uri,
                           alias="candidate", promote_margin=0.3, run_id="run3")
    assert (third["version"], third["winner"], third["promoted"]) == ("v3", "a1", False)
    assert "margin 0.3" in third["reason"]
    assert registry.resolve("emoflow@candidate") == ("emoflow", "v3")
    assert registry.resolve("emoflow@production") == ("emoflow", "v1")

    # fourth run, better by more than the margin: candidate and promoted to production
    fourth = steps.register(*fake_run(tmp_path, "run4", {"a1": 1.0, "a2": 0.25}), store_uri,
                            alias="candidate", promote_margin=0.2, run_id="run4")
    assert (fourth["version"], fourth["winner"], fourth["promoted"]) == ("v4", "a1", True)
    assert "beats production 0.75" in fourth["reason"]
    assert registry.resolve("emoflow@candidate") == ("emoflow", "v4")
    assert registry.resolve("emoflow@production") == ("emoflow", "v4")
    assert registry.show("emoflow@production")["metadata"]["pipeline_run"] == "run4"
    local = registry.download("emoflow@production", tmp_path / "dl4")
    assert (local / "model" / "model.safetensors").read_bytes() == b"run4-a1-weights"
    assert json.loads((local / "reference_distribution.json").read_text()).keys() == set(LABELS)
