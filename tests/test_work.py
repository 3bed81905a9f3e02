"""Work counters: each step's delta, the per-run work log that `emoflow run` adds up, one line."""

from emoflow import work


def test_counting_reports_the_steps_delta_and_the_log_adds_them_up(tmp_path, monkeypatch):
    monkeypatch.setenv(work.LOG_ENV, str(tmp_path / "log"))
    work.add("epochs", 5)  # before the step: not its work
    with work.counting("train") as first:
        work.add("epochs", 3)
        work.reused("folds", 2)
    with work.counting("features") as second:
        work.add("encoder_passes", 24)
        work.add("logmel", 24)
    with work.counting("evaluate") as third:
        pass
    assert first == {"work": {"epochs": 3}, "reused": {"folds": 2}}
    assert second == {"work": {"encoder_passes": 24, "logmel": 24}, "reused": {}}
    assert third == {"work": {}, "reused": {}}
    total = work.total(tmp_path / "log")
    assert total == {"steps": 3, "work": {"encoder_passes": 24, "epochs": 3, "logmel": 24}, "reused": {"folds": 2}}
    assert work.describe(total) == "work done: 24 encoder passes, 3 training epochs (logmel 24); reused: folds 2"
    assert work.describe(third) == "work done: 0 encoder passes, 0 training epochs; reused: nothing"


def test_no_log_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(work.LOG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with work.counting("train"):
        work.add("epochs")
    assert list(tmp_path.iterdir()) == []
    assert work.total(tmp_path / "missing") == {"steps": 0, "work": {}, "reused": {}}
