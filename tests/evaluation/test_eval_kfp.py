"""KFP Metrics / ClassificationMetrics artifacts carry what the Kubeflow UI renders."""

import pytest
from kfp import dsl

from emoflow.evaluation.kfp_outputs import log_kfp_metrics
from emoflow.evaluation.metrics import aggregate, compute_metrics

LABELS = ["a", "b", "c"]


def artifacts(tmp_path):
    return (dsl.Metrics(name="metrics", uri=str(tmp_path / "m")),
            dsl.ClassificationMetrics(name="cm", uri=str(tmp_path / "c")))


def test_aggregate_result_logged(tmp_path):
    agg = aggregate({"f1": {"y_true": list("aabc"), "y_pred": list("abbc")},
                     "f2": {"y_true": list("abc"), "y_pred": list("abc")}}, LABELS)
    m, c = artifacts(tmp_path)
    logged = log_kfp_metrics(m, c, agg, LABELS)
    assert m.metadata == logged
    assert m.metadata["wa_mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert m.metadata["wa_std"] == pytest.approx(0.125)
    assert m.metadata["wa_pooled"] == pytest.approx(6 / 7)
    assert m.metadata["ua_pooled"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert m.metadata["n_folds"] == 2.0 and m.metadata["n"] == 7.0
    assert set(m.metadata) == {f"{k}_{a}" for k in ("ua", "wa", "wf1", "mf1")
                               for a in ("mean", "std", "pooled")} | {"n_folds", "n"}
    assert all(isinstance(v, float) for v in m.metadata.values())
    assert c.metadata["confusionMatrix"] == {
        "annotationSpecs": [{"displayName": "a"}, {"displayName": "b"}, {"displayName": "c"}],
        "rows": [{"row": [2, 1, 0]}, {"row": [0, 2, 0]}, {"row": [0, 0, 2]}],
    }


def test_single_result_prefix_and_checks(tmp_path):
    m, c = artifacts(tmp_path)
    res = compute_metrics(list("abc"), list("abb"), LABELS)
    log_kfp_metrics(m, None, res, LABELS, prefix="a2_")
    assert m.metadata == pytest.approx({"a2_ua": 2 / 3, "a2_wa": 2 / 3, "a2_wf1": res["wf1"],
                                        "a2_mf1": res["mf1"], "a2_n": 3.0})
    assert "confusionMatrix" not in c.metadata
    with pytest.raises(ValueError, match="differ from labels"):
        log_kfp_metrics(m, c, res, ["x", "y", "z"])
