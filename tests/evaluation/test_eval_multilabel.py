"""Makhmudov et al. 2024's CMU-MOSEI metric: per-emotion binary weighted accuracy (its Eq. 6)."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from emoflow.evaluation.metrics import binary_weighted_accuracy, multilabel_metrics


def test_eq6_by_hand():
    # P = 2 positives, N = 6 negatives; TP = 1, TN = 5 -> (1 * 6/2 + 5) / 12 = 8/12
    truth = [1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 0, 1, 0, 0, 0, 0, 0]
    assert binary_weighted_accuracy(truth, pred) == pytest.approx(8 / 12)
    # "identical to the mean recall" of the two classes (the paper's sentence under Eq. 6)
    assert binary_weighted_accuracy(truth, pred) == pytest.approx(balanced_accuracy_score(truth, pred))


def test_eq6_equals_mean_recall_on_random_tasks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = rng.random(50) < rng.uniform(0.1, 0.9)
        p = rng.random(50) < 0.5
        if 0 < t.sum() < t.size:
            assert binary_weighted_accuracy(t, p) == pytest.approx(balanced_accuracy_score(t, p))


def test_eq6_undefined_without_both_classes():
    with pytest.raises(ValueError, match="P=0"):
        binary_weighted_accuracy([0, 0], [1, 0])
    with pytest.raises(ValueError, match=r"y_pred\[1\]"):
        binary_weighted_accuracy([0, 1], [1, 2])


def test_multilabel_per_emotion_and_mean():
    labels = ["happy", "sad", "fear"]
    truth = [["happy"], ["happy", "sad"], [], ["sad"]]
    pred = [["happy"], ["sad"], ["happy"], ["sad"]]
    m = multilabel_metrics(truth, pred, labels)
    happy = m["per_label"]["happy"]
    # happy: P=2, N=2, TP=1, TN=1 -> (1*2/2 + 1)/4 = 0.5; accuracy 2/4; F1 2/(2+1+1)
    assert happy["wa"] == pytest.approx(0.5) and happy["accuracy"] == 0.5 and happy["f1"] == pytest.approx(0.5)
    assert m["per_label"]["sad"]["wa"] == 1.0
    assert m["per_label"]["fear"]["wa"] is None and m["per_label"]["fear"]["f1"] is None  # never present
    assert m["mean"]["wa"] == pytest.approx(0.75)  # over the emotions where it is defined
    with pytest.raises(ValueError, match="anger"):
        multilabel_metrics([["anger"]], [[]], labels)
