"""The evaluate step keeps the protocol apart; `emoflow evaluate` scores a registered model on a corpus."""

import json

import pytest

from emoflow import steps
from emoflow.corpora.synthetic import generate_demo_corpus
from serving.serving_helpers import LABELS, register_tiny_model


def write_predictions(path, protocol):
    folds = {
        "fold1-S1": {"y_true": ["angry", "happy", "sad", "neutral"], "y_pred": ["angry", "happy", "sad", "sad"]},
        "fold2-S2": {"y_true": ["angry", "happy", "sad", "neutral"], "y_pred": ["happy", "happy", "sad", "neutral"]},
    }
    path.write_text(json.dumps({"arch": "a1", "preset": {"name": "tiny"}, "labels": LABELS,
                                "protocol": protocol, "folds": folds}))


@pytest.mark.parametrize("protocol", ["strict", "speaker-normalised"])
def test_evaluate_reports_the_training_protocol(tmp_path, protocol):
    write_predictions(tmp_path / "pred.json", protocol)
    summary = steps.evaluate(str(tmp_path / "pred.json"), str(tmp_path / "eval"), corpus="demo")
    assert summary["protocol"] == protocol
    assert summary["metrics"]["pooled"]["wa"] == pytest.approx(6 / 8)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert protocol.split("-")[0] in report.lower()
    other = "speaker" if protocol == "strict" else "strict"
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["protocol"] != other


@pytest.mark.slow
def test_score_registered_model_on_another_corpus(tmp_path):
    store = register_tiny_model(tmp_path)
    corpus = tmp_path / "corpus"
    generate_demo_corpus(corpus, sessions=1, speakers_per_session=1, utterances_per_speaker=8)
    result = steps.score("emoflow@production", "demo", str(corpus), store, str(tmp_path / "out"))
    summary = result["summary"]
    assert summary["model"] == "emoflow/v1" and summary["n"] == 8
    assert 0.0 <= summary["ua"] <= 1.0 and summary["quarantined"] == 0
    assert json.loads((tmp_path / "out" / "score.json").read_text())["n"] == 8
    assert (tmp_path / "out" / "report.md").exists()
