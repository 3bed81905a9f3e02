"""The evaluate and register steps on a multi-label run (CMU-MOSEI, Makhmudov et al. 2024): Eq. 4-6
per emotion and their means in evaluation.json, the report and the KFP metrics; the winner is picked
on the multi-label metric, and a metric of the other task is refused."""

import json

import pytest

from emoflow import steps
from emoflow.evaluation.metrics import multilabel_metrics

LABELS = ["angry", "happy", "sad"]
# one fold of 4 items: truth and predicted presence sets (dominant = first)
TRUE = [["happy", "sad"], ["angry"], ["sad"], ["happy"]]
PRED = [["happy"], ["angry", "sad"], ["sad"], []]


class Recorder:
    """Stands in for kfp.dsl.Metrics / ClassificationMetrics (log_metric / log_confusion_matrix)."""

    def __init__(self):
        self.metrics, self.matrix = {}, None

    def log_metric(self, name, value):
        self.metrics[name] = value

    def log_confusion_matrix(self, labels, matrix):
        self.matrix = (labels, matrix)


def multilabel_run(root, arch: str = "a1", pred_sets=PRED) -> tuple[str, str]:
    fold = {"ids": ["u0", "u1", "u2", "u3"], "y_true": [s[0] for s in TRUE],
            "y_pred": [(s or ["happy"])[0] for s in pred_sets], "true_sets": TRUE, "pred_sets": pred_sets}
    path = root / arch / "predictions.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"arch": arch, "labels": LABELS, "task": "multilabel", "folds": {"official": fold},
                                "preset": {"name": "paper"}, "validation": {"mode": "fraction", "share": 0.1}}))
    model_dir = root / arch / "train"
    (model_dir / "model").mkdir(parents=True)
    (model_dir / "model" / "model.safetensors").write_bytes(b"weights")
    (model_dir / "train.json").write_text(json.dumps({"arch": arch, "labels": LABELS}))
    return str(path), str(model_dir)


def test_evaluate_reports_eq4_to_eq6_per_emotion_and_their_mean(tmp_path):
    pred, _ = multilabel_run(tmp_path)
    metrics, classification = Recorder(), Recorder()
    ev = steps.evaluate(pred, str(tmp_path / "eval"), corpus="mosei", metrics_artifact=metrics,
                        classification_artifact=classification)
    expected = multilabel_metrics(TRUE, PRED, LABELS)
    assert ev["task"] == "multilabel"
    assert ev["metrics"]["pooled"]["multilabel"]["per_label"] == expected["per_label"]
    # happy: P=2, N=2, TP=1, TN=2 -> Eq. 6 = (1 x 2/2 + 2) / 4
    assert expected["per_label"]["happy"]["wa"] == pytest.approx(0.75)
    for key, eq in (("ml_wa", "wa"), ("ml_accuracy", "accuracy"), ("ml_f1", "f1")):
        assert ev["metrics"]["mean"][key] == pytest.approx(expected["mean"][eq])
        assert ev["metrics"]["pooled"][key] == pytest.approx(expected["mean"][eq])
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["metrics"]["mean"]["ml_wa"] == pytest.approx(expected["mean"]["wa"])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "WA (Eq. 6)" in report and "Accuracy (Eq. 4)" in report and "F1 (Eq. 5)" in report
    assert "| happy | 75.00 |" in report
    assert metrics.metrics["ml_wa_mean"] == pytest.approx(expected["mean"]["wa"])
    assert metrics.metrics["ml_wa_happy"] == pytest.approx(0.75)
    assert {"ml_accuracy_pooled", "ml_f1_mean", "ua_mean"} <= set(metrics.metrics)


def test_register_picks_the_winner_on_mean_eq6_and_refuses_a_single_label_metric(tmp_path):
    a1_pred, a1_model = multilabel_run(tmp_path, "a1")
    a3_pred, a3_model = multilabel_run(tmp_path, "a3", pred_sets=TRUE)  # perfect presence sets
    evals = []
    for arch, pred in (("a1", a1_pred), ("a3", a3_pred)):
        steps.evaluate(pred, str(tmp_path / arch / "eval"), corpus="mosei")
        evals.append(str(tmp_path / arch / "eval"))
    store = str(tmp_path / "store")
    with pytest.raises(ValueError, match=r"winner_metric 'ua' does not fit the multilabel run of \['a1', 'a3'\]"):
        steps.register([a1_model, a3_model], evals, store, winner_metric="ua")
    result = steps.register([a1_model, a3_model], evals, store, winner_metric="ml_wa")
    assert result["winner"] == "a3" and result["metric"] == "ml_wa" and result["value"] == pytest.approx(1.0)


def test_a_multilabel_metric_is_refused_for_a_single_label_run():
    with pytest.raises(ValueError, match="single-label run has no multi-label metrics"):
        steps.check_winner_metric("ml_wa", {"a1": "single_label"})
    steps.check_winner_metric("wf1", {"a1": "single_label"})
