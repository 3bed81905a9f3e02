"""Metrics against hand-computed values; aggregation mean/std/pooled."""

import math

import numpy as np
import pytest

from emoflow.evaluation.metrics import aggregate, compute_metrics

LABELS = ["a", "b", "c", "d"]  # "d" never occurs: its confusion row must stay zero
Y_TRUE = list("aaaabbcccc")
Y_PRED = list("aabcbacccb")
# confusion (rows = true a, b, c, d; columns = predicted a, b, c, d), counted by hand:
#   a: 2 1 1 0     b: 1 1 0 0     c: 0 1 3 0     d: 0 0 0 0
# correct = 2 + 1 + 3 = 6 of 10                      → WA  = 0.6
# recall    a 2/4, b 1/2, c 3/4                      → UA  = (0.5 + 0.5 + 0.75) / 3 = 0.583333
# precision a 2/3 (column 2+1+0), b 1/3 (1+1+1), c 3/4 (1+0+3)
# F1        a 2·(2/3·1/2)/(2/3+1/2) = 4/7, b 2·(1/3·1/2)/(1/3+1/2) = 2/5, c 3/4
# MF1 = (4/7 + 2/5 + 3/4) / 3 = 241/420               (d: neither true nor predicted → excluded)
# WF1 = (4·4/7 + 2·2/5 + 4·3/4) / 10 = 213/350


def test_hand_computed_small_case():
    m = compute_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["n"] == 10
    assert m["wa"] == pytest.approx(0.6)
    assert m["ua"] == pytest.approx(1.75 / 3)
    assert m["mf1"] == pytest.approx(241 / 420)
    assert m["wf1"] == pytest.approx(213 / 350)
    assert m["confusion"] == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    assert np.allclose(m["confusion_norm"], [[0.5, 0.25, 0.25, 0], [0.5, 0.5, 0, 0],
                                             [0, 0.25, 0.75, 0], [0, 0, 0, 0]])
    pc = m["per_class"]
    assert pc["a"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "support": 4})
    assert pc["b"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    assert pc["c"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    # undefined, not invented
    assert pc["d"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["labels"] == LABELS


def test_indices_equal_labels_and_unknown_labels_are_errors():
    idx = {lab: i for i, lab in enumerate(LABELS)}
    m = compute_metrics([idx[x] for x in Y_TRUE], np.array([idx[x] for x in Y_PRED]), LABELS)
    assert m["ua"] == pytest.approx(1.75 / 3) and m["confusion"][0] == [2, 1, 1, 0]
    with pytest.raises(ValueError, match=r"y_pred\[1\] = 'zzz' is not one of the labels"):
        compute_metrics(["a", "b"], ["a", "zzz"], LABELS)
    with pytest.raises(ValueError, match=r"y_true\[0\] = 7"):
        compute_metrics([7], [0], LABELS)
    with pytest.raises(ValueError, match="2 items but y_pred has 1"):
        compute_metrics(["a", "b"], ["a"], LABELS)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], LABELS)
    with pytest.raises(ValueError, match="duplicate labels"):
        compute_metrics(["a"], ["a"], ["a", "a"])


def test_predicted_but_absent_class_counts_in_macro_f1_not_in_ua():
    # true only a/b; the model also predicts c once
    m = compute_metrics(["a", "a", "b", "b"], ["a", "c", "b", "b"], ["a", "b", "c"])
    assert m["ua"] == pytest.approx((0.5 + 1.0) / 2)  # c has no recall: left out of UA
    # F1: a = 2·(1·0.5)/1.5 = 2/3, b = 1, c = 0 (predicted, never right)
    assert m["mf1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}


def test_aggregate_mean_std_and_pooled():
    folds = {
        "fold1": {"y_true": Y_TRUE, "y_pred": Y_PRED, "ids": list(range(10))},  # extra keys ok
        "fold2": {"y_true": ["a", "b"], "y_pred": ["a", "b"]},
    }
    agg = aggregate(folds, LABELS)
    assert agg["n_folds"] == 2 and list(agg["folds"]) == ["fold1", "fold2"]
    assert agg["folds"]["fold2"]["wa"] == 1.0
    # WA: folds 0.6 and 1.0 → mean 0.8, population std 0.2
    assert agg["mean"]["wa"] == pytest.approx(0.8)
    assert agg["std"]["wa"] == pytest.approx(0.2)
    # UA: folds 0.58333 and 1.0
    assert agg["mean"]["ua"] == pytest.approx((1.75 / 3 + 1) / 2)
    assert agg["std"]["ua"] == pytest.approx(abs(1 - 1.75 / 3) / 2)
    # pooled over 12 predictions: 8 correct; recalls a 3/5, b 2/3, c 3/4
    assert agg["pooled"]["n"] == 12
    assert agg["pooled"]["wa"] == pytest.approx(8 / 12)
    assert agg["pooled"]["ua"] == pytest.approx((3 / 5 + 2 / 3 + 3 / 4) / 3)
    assert agg["pooled"]["confusion"] == [[3, 1, 1, 0], [1, 2, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    for m in ("wa", "ua", "wf1", "mf1"):
        assert not math.isnan(agg["mean"][m])


def test_aggregate_errors_name_the_fold():
    with pytest.raises(ValueError, match="no fold results"):
        aggregate({}, LABELS)
    with pytest.raises(ValueError, match="fold 'f2': missing 'y_pred'"):
        aggregate({"f1": {"y_true": ["a"], "y_pred": ["a"]}, "f2": {"y_true": ["a"]}}, LABELS)
    with pytest.raises(ValueError, match="fold 'f1': y_true"):
        aggregate({"f1": {"y_true": ["q"], "y_pred": ["a"]}}, LABELS)
