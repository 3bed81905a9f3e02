"""Winner selection, the written report (JSON, PNG, Markdown, HTML) and protocol separation."""

import json

import pytest

from emoflow.evaluation.metrics import aggregate
from emoflow.evaluation.report import PAPER_FIGURES, rank, select_winner, write_report

LABELS = ["ang", "hap", "neu", "sad"]


def result(pairs_by_fold, **extra):
    """pairs_by_fold: {fold: (y_true string, y_pred string)} using the first letters of LABELS."""
    full = {l[0]: l for l in LABELS}
    folds = {f: {"y_true": [full[c] for c in t], "y_pred": [full[c] for c in p]}
             for f, (t, p) in pairs_by_fold.items()}
    return {**aggregate(folds, LABELS), **extra}


def fake(mean_ua, std_ua, pooled_ua=0.5):
    return {"mean": {"ua": mean_ua, "wa": 0.5, "wf1": 0.5, "mf1": 0.5},
            "std": {"ua": std_ua, "wa": 0.0, "wf1": 0.0, "mf1": 0.0},
            "pooled": {"ua": pooled_ua, "wa": 0.5, "wf1": 0.5, "mf1": 0.5}}


def test_select_winner_metric_aggregate_and_ties():
    res = {"a1": fake(0.60, 0.05, 0.70), "a2": fake(0.65, 0.10, 0.60), "a3": fake(0.65, 0.02, 0.55),
           "a4": fake(0.65, 0.02, 0.50)}
    # tie on mean UA between a2/a3/a4: lower std wins, then the name
    assert select_winner(res) == "a3"
    assert [r["name"] for r in rank(res)] == ["a3", "a4", "a2", "a1"]
    assert select_winner(res, aggregate="pooled") == "a1"
    res["a4"]["mean"]["wf1"] = 0.9
    assert select_winner(res, metric="wf1") == "a4"
    # deterministic regardless of insertion order
    assert select_winner(dict(reversed(list(res.items())))) == "a3"
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        select_winner(res, metric="f2")
    with pytest.raises(ValueError, match="unknown aggregate"):
        select_winner(res, aggregate="median")
    with pytest.raises(ValueError, match="result 'x' has no mean 'ua'"):
        select_winner({"x": {}})


def test_select_winner_never_mixes_protocols():
    res = {"a1": {**fake(0.6, 0.0), "protocol": "strict"},
           "a1-norm": {**fake(0.8, 0.0), "protocol": "speaker-normalised"}}
    with pytest.raises(ValueError, match="mix protocols"):
        select_winner(res)
    assert select_winner(res, protocol="strict") == "a1"
    assert select_winner(res, protocol="speaker_normalised") == "a1-norm"


def test_write_report_files_and_content(tmp_path):
    res = {
        "a2": result({"fold1-Ses01": ("ahns", "ahns"), "fold2-Ses02": ("ahns", "ahss")}),
        "a1": result({"fold1-Ses01": ("ahns", "aans"), "fold2-Ses02": ("ahns", "nhns")}),
    }
    paths = write_report(res, tmp_path / "rep", corpus="demo", protocol="strict")
    for key in ("metrics_json", "report_md", "report_html", "confusion_png:a1", "confusion_png:a2"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    for key in ("confusion_png:a1", "confusion_png:a2"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["report_md"].read_text()
    html = paths["report_html"].read_text()
    for text in (md, html):
        assert "Protocol: strict" in text
        assert "Winner (strict): a2" in text
        assert "fold2-Ses02" in text                        # per-fold table
        assert "87.50 ± 12.50" in text                      # a2 UA: folds 100 and 75
        assert "76.07" in text and "77.58" in text          # paper figures column / table
        assert "unweighted accuracy = balanced accuracy" in text  # glossary
        assert "n/a in issue" in text                       # A1 figures not in the issue
        assert "confusion_a2.png" in text
    assert html.startswith("<!DOCTYPE html>")
    data = json.loads(paths["metrics_json"].read_text())
    strict = data["protocols"]["strict"]
    assert strict["winner"]["name"] == "a2" and strict["winner"]["value"] == pytest.approx(0.875)
    assert strict["results"]["a2"]["pooled"]["n"] == 8
    assert strict["results"]["a1"]["folds"]["fold1-Ses01"]["wa"] == pytest.approx(0.75)
    assert data["paper_figures"]["a2"]["figures"] == {"ua": 76.07, "wa": 75.76}
    assert set(data["protocols"]) == {"strict"}


def test_protocols_are_separate_sections(tmp_path):
    res = {
        "a4": result({"f1": ("ahns", "ahns")}),
        "a4-spknorm": result({"f1": ("ahns", "ahnn")}, protocol="speaker-normalised", arch="a4"),
    }
    # given winner applies to its own protocol section only
    paths = write_report(res, tmp_path, corpus="ravdess", winner="a4-spknorm")
    md = paths["report_md"].read_text()
    strict_part, norm_part = md.split("## Protocol: speaker-normalised")
    assert "## Protocol: strict" in strict_part and "a4-spknorm" not in strict_part.split("## Protocol: strict")[1]
    assert "Winner (strict): a4" in strict_part
    assert "Winner (speaker-normalised): a4-spknorm" in norm_part
    assert "76.40" in norm_part  # paper figures found through arch="a4"
    data = json.loads(paths["metrics_json"].read_text())
    assert data["protocols"]["speaker-normalised"]["winner"]["chosen_by"] == "given"
    assert list(data["protocols"]["strict"]["results"]) == ["a4"]


def test_write_report_rejects_bad_input(tmp_path):
    res = {"a1": result({"f1": ("ah", "ah")})}
    with pytest.raises(ValueError, match="winner 'a9'"):
        write_report(res, tmp_path, corpus="c", winner="a9")
    with pytest.raises(ValueError, match="unknown protocol 'loose'"):
        write_report(res, tmp_path, corpus="c", protocol="loose")
    with pytest.raises(ValueError, match="result 'x' has no 'folds'"):
        write_report({"x": {"mean": {}}}, tmp_path, corpus="c")


def test_paper_figures_as_in_issue():
    assert PAPER_FIGURES["a2"]["figures"] == {"ua": 76.07, "wa": 75.76}
    assert PAPER_FIGURES["a3"]["figures"] == {"wa": 77.58}
    assert PAPER_FIGURES["a4"]["figures"] == {"ua": 76.4, "wa": 75.2}
    assert PAPER_FIGURES["a1"]["figures"] == {} and PAPER_FIGURES["a1"]["note"] == "n/a in issue"
