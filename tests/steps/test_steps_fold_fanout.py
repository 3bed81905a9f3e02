"""Per-fold fan-out (issue 6): plan_folds → train_fold per fold → finalize gives the same fold
predictions and the same final model as the one-task train step."""

import json
from pathlib import Path

import numpy as np
import pytest

from emoflow import steps
from emoflow.audio.features import extract_features
from emoflow.audio.logmel import LogMelConfig
from emoflow.corpora import write_manifest
from emoflow.corpora.synthetic import generate_demo_corpus, read_demo
from emoflow.storage import open_store
from emoflow.training.run import merge_fold_predictions


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fanout")
    generate_demo_corpus(root / "corpus", sessions=3, speakers_per_session=1, utterances_per_speaker=8)
    return root


def featurized(root: Path, name: str) -> tuple[str, str]:
    """A fresh store (no shared checkpoints) with log-mel features, and its manifest."""
    store = str(root / name / "store")
    utts = extract_features(read_demo(root / "corpus"), open_store(store), LogMelConfig())
    manifest = root / name / "manifest.jsonl"
    write_manifest(manifest, utts)
    return str(manifest), store


def load_weights(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(next((model_dir / "model").glob("*.safetensors"))))


@pytest.mark.slow
def test_fanned_out_folds_equal_the_one_task_train(corpus):
    manifest, store = featurized(corpus, "one")
    whole = corpus / "one" / "out"
    steps.train(manifest, store, "a1", "tiny", str(whole), epochs=1, feature_config={"n_mels": 128}, progress=False)

    manifest2, store2 = featurized(corpus, "fan")
    plan = steps.plan_folds(manifest2)
    assert plan == ["fold1-S1", "fold2-S2", "fold3-S3"]
    parts = []
    for fold in reversed(plan):  # completion order must not matter
        out = corpus / "fan" / f"{fold}.json"
        summary = steps.train_fold(manifest2, store2, "a1", "tiny", fold, str(out), epochs=1, progress=False)
        assert summary["fold"] == fold and summary["best_epoch"] >= 1
        assert list(json.loads(out.read_text())["folds"]) == [fold]
        parts.append(str(out))
    fanned = corpus / "fan" / "out"
    result = steps.finalize(manifest2, store2, "a1", "tiny", parts, str(fanned), epochs=1,
                            feature_config={"n_mels": 128}, progress=False)
    assert result["arch"] == "a1" and result["final_epochs"] == 1

    a = json.loads((whole / "predictions.json").read_text())
    b = json.loads((fanned / "predictions.json").read_text())
    assert list(b["folds"]) == plan == list(a["folds"])
    for fold in plan:
        for key in ("ids", "y_true", "y_pred", "best_epoch", "test_groups", "val_groups"):
            assert a["folds"][fold][key] == b["folds"][fold][key], (fold, key)
        np.testing.assert_allclose(a["folds"][fold]["probs"], b["folds"][fold]["probs"], atol=1e-5)
    assert (a["run_key"], a["final_epochs"], a["labels"]) == (b["run_key"], b["final_epochs"], b["labels"])
    wa, wb = load_weights(whole), load_weights(fanned)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], atol=1e-5, err_msg=name)
    assert json.loads((fanned / "train.json").read_text()) == json.loads((whole / "train.json").read_text())
    assert json.loads((fanned / "model" / "feature_config.json").read_text()) == {"n_mels": 128}
    # the evaluate step reads the merged predictions like the one-task ones
    ev = steps.evaluate(str(fanned / "predictions.json"), str(corpus / "fan" / "eval"))
    assert set(ev["metrics"]["folds"]) == set(plan)

    # finalize refuses an incomplete plan, and parts of another architecture only
    with pytest.raises(ValueError, match=r"missing \['fold3-S3'\]"):
        steps.finalize(manifest2, store2, "a1", "tiny", parts[1:], str(corpus / "fan" / "bad"), epochs=1,
                       progress=False)
    with pytest.raises(ValueError, match="no fold predictions for architecture 'a2'"):
        steps.finalize(manifest2, store2, "a2", "tiny", parts, str(corpus / "fan" / "bad2"), epochs=1,
                       progress=False)
    # ... and parts trained with another configuration (epochs differ: another run key)
    with pytest.raises(ValueError, match="data, preset or training config differ"):
        steps.finalize(manifest2, store2, "a1", "tiny", parts, str(corpus / "fan" / "bad3"), epochs=2,
                       progress=False)


def part(fold: str, run_key: str = "k1", arch: str = "a1") -> dict:
    return {"arch": arch, "run_key": run_key, "fold_scheme": "logo", "labels": ["a", "b"],
            "folds": {fold: {"best_epoch": 2, "y_true": ["a"], "y_pred": ["b"]}}}


def test_merge_orders_folds_by_plan_and_rejects_bad_parts():
    merged = merge_fold_predictions([part("f2"), part("f1")], expected_folds=["f1", "f2"])
    assert list(merged["folds"]) == ["f1", "f2"] and merged["run_key"] == "k1"
    with pytest.raises(ValueError, match="fold 'f1' appears in more than one"):
        merge_fold_predictions([part("f1"), part("f1")])
    with pytest.raises(ValueError, match="part 1 has run_key='k2'"):
        merge_fold_predictions([part("f1"), part("f2", run_key="k2")])
    with pytest.raises(ValueError, match=r"missing \['f3'\], unexpected \[\]"):
        merge_fold_predictions([part("f1"), part("f2")], expected_folds=["f1", "f2", "f3"])
    with pytest.raises(ValueError, match=r"unexpected \['f9'\]"):
        merge_fold_predictions([part("f1"), part("f9")], expected_folds=["f1"])
    with pytest.raises(ValueError, match="no fold predictions"):
        merge_fold_predictions([])


def test_fingerprint_follows_data_and_configuration(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "u1"}\n')
    base = steps.fingerprint(str(manifest), architectures=["a1"], preset="tiny", feature_config={"n_mels": 128},
                             epochs=1)
    assert base == steps.fingerprint(str(manifest), architectures=["a1"], preset="tiny",
                                     feature_config={"n_mels": 128.0}, epochs=1)  # KFP's float round trip
    others = {
        steps.fingerprint(str(manifest), architectures=["a1"], preset="paper", feature_config={"n_mels": 128}, epochs=1),
        steps.fingerprint(str(manifest), architectures=["a1", "a2"], preset="tiny", feature_config={"n_mels": 128},
                          epochs=1),
        steps.fingerprint(str(manifest), architectures=["a1"], preset="tiny", feature_config={"n_mels": 64}, epochs=1),
        steps.fingerprint(str(manifest), architectures=["a1"], preset="tiny", feature_config={"n_mels": 128}, epochs=2),
    }
    manifest.write_text('{"id": "u2"}\n')
    others.add(steps.fingerprint(str(manifest), architectures=["a1"], preset="tiny", feature_config={"n_mels": 128},
                                 epochs=1))
    assert base not in others and len(others) == 5
    # a preset given as a YAML file: its content counts, not its name
    preset = tmp_path / "p.yaml"
    preset.write_text("arch: a1\nname: custom\ntrain: {epochs: 1}\n")
    one = steps.fingerprint(str(manifest), architectures=["a1"], preset=str(preset))
    preset.write_text("arch: a1\nname: custom\ntrain: {epochs: 2}\n")
    assert steps.fingerprint(str(manifest), architectures=["a1"], preset=str(preset)) != one
