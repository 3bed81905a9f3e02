"""The validation choice reaches training: the train step's folds, A2's early stopping and fusion
weight use the validation part the run parameter asks for, and the report and model card say which."""

import json

import pytest

from emoflow import steps
from emoflow.audio.features import extract_features
from emoflow.audio.logmel import LogMelConfig
from emoflow.corpora import write_manifest
from emoflow.corpora.synthetic import generate_demo_corpus, read_demo
from emoflow.storage import open_store
from emoflow.training import run as training_run


@pytest.fixture(scope="module")
def featurized(tmp_path_factory):
    root = tmp_path_factory.mktemp("valwiring")
    generate_demo_corpus(root / "corpus", sessions=3, speakers_per_session=2, utterances_per_speaker=2)
    store = str(root / "store")
    utts = extract_features(read_demo(root / "corpus"), open_store(store), LogMelConfig())
    write_manifest(root / "manifest.jsonl", utts)
    return root, str(root / "manifest.jsonl"), store, {u.id: u for u in utts}


def small_a2(root) -> str:
    """A2's tiny preset with one residual block per stage and 0.4 s training chunks (same code paths)."""
    import yaml

    from emoflow.models import load_preset

    preset = load_preset("a2", "tiny")
    preset["model"]["speech"]["blocks"] = [1, 1, 1, 1]
    preset["train"]["chunk_frames"] = [40, 40]
    path = root / "a2-small.yaml"
    path.write_text(yaml.safe_dump(preset))
    return str(path)


def test_a2_early_stopping_and_fusion_use_the_runs_validation_part(featurized, monkeypatch):
    root, manifest, store, by_id = featurized
    seen = {"fit": [], "fusion": []}
    real_fit, real_fusion = training_run.fit, training_run._fusion_calibration

    def spy_fit(model, train, val, cfg, **kw):
        if val is not None:  # the folds (the final fit has no validation part)
            seen["fit"].append(([it.id for it in train], [it.id for it in val]))
        return real_fit(model, train, val, cfg, **kw)

    def spy_fusion(model, val, device):
        seen["fusion"].append([it.id for it in val])
        return real_fusion(model, val, device)

    monkeypatch.setattr(training_run, "fit", spy_fit)
    monkeypatch.setattr(training_run, "_fusion_calibration", spy_fusion)
    out = root / "speaker"
    steps.train(manifest, store, "a2", small_a2(root), str(out), epochs=1, validation="speaker", progress=False)
    pred = json.loads((out / "predictions.json").read_text())
    assert pred["validation"] == {"mode": "speaker", "share": 0.1}
    assert len(seen["fit"]) == 3 and [v for _, v in seen["fit"]] == seen["fusion"]
    for (train_ids, val_ids), fold in zip(seen["fit"], pred["folds"].values()):
        assert len({by_id[i].speaker for i in val_ids}) == 1  # exactly one training speaker
        assert fold["val_groups"] == [by_id[val_ids[0]].speaker] and fold["val_unit"] == "speaker"
        assert not set(val_ids) & set(fold["ids"])  # never the test group
        # LOSO with one validation speaker trains on both other sessions
        assert {by_id[i].session for i in train_ids} == {by_id[i].session for i in by_id} - set(fold["test_groups"])

    ev = steps.evaluate(str(out / "predictions.json"), str(root / "eval"), corpus="demo")
    assert ev["validation"] == {"mode": "speaker", "share": 0.1}
    assert "validation `speaker`: all utterances of one speaker" in (root / "eval" / "report.md").read_text()
    card = steps.model_card("emoflow", ev, {"a2": ev}, "ua")
    assert "Model selection: validation `speaker`" in card


def test_fraction_plan_and_fan_out_agree(featurized):
    _, manifest, _, by_id = featurized
    plan = steps.plan_folds(manifest, validation="fraction", validation_share=0.25)
    assert plan == steps.plan_folds(manifest)  # fold names do not depend on validation
    folds = training_run.fold_plan(list(by_id.values()), "logo", None, 0, validation="fraction",
                                   validation_share=0.25)
    for f in folds:
        sessions = {by_id[i].session for i in by_id} - set(f.test_groups)
        assert {by_id[i].session for i in f.train_ids} == sessions and f.val_unit == "fraction"
