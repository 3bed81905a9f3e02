"""Multi-label training (CMU-MOSEI under Makhmudov et al. 2024): the task comes from the corpus
protocol, targets are multi-hot from extra.emotion_presence, the loss is BCE-with-logits, the epoch
is selected on the mean Eq. 6 WA, and the saved model keeps its sigmoid reading."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emoflow.corpora import Utterance
from emoflow.models import build_model, load_model, load_preset, save_model
from emoflow.models import base as model_base
from emoflow.training.data import Item, UtteranceDataset, load_items, make_collate, presence_sets, training_task
from emoflow.training.run import labels_of, with_task
from emoflow.training.multilabel import presence_pos_weight
from emoflow.training.trainer import TrainConfig, fit, predict, selection_metric

LABELS = ["angry", "happy", "sad"]
WORDS = {"angry": "furious shouting", "happy": "wonderful joy", "sad": "lonely tears"}


def utterance(i: int, present: list[str], task: str | None = "multilabel") -> Utterance:
    extra = {"emotion_presence": present, **({"task": task} if task else {})}
    return Utterance(id=f"u{i}", audio=None, text=WORDS[present[0]], label=present[0], speaker="s", session="s",
                     corpus="mosei", extra=extra)


def test_multi_hot_targets_from_emotion_presence():
    utts = [utterance(0, ["happy", "sad"]), utterance(1, ["angry"])]
    data = load_items(utts, None, LABELS, {"text"}, task="multilabel")
    assert data.items[0].target.tolist() == [0.0, 1.0, 1.0] and data.items[1].target.tolist() == [1.0, 0.0, 0.0]
    batch = make_collate(None)(data.items)
    assert batch["targets"].dtype == torch.float32 and batch["targets"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]  # the dominant emotion stays the single label
    single = load_items(utts, None, LABELS, {"text"})
    assert single.items[0].target is None and "targets" not in make_collate(None)(single.items)


def test_bad_multi_label_truth_is_an_error_naming_the_utterance():
    bare = Utterance(id="x7", audio=None, text="t", label="sad", speaker="s", session="s", corpus="mosei")
    with pytest.raises(ValueError, match="'x7' has no multi-label truth"):
        load_items([bare], None, LABELS, {"text"}, task="multilabel")
    with pytest.raises(ValueError, match=r"u3.*\['fear'\]"):
        load_items([utterance(3, ["sad", "fear"])], None, LABELS, {"text"}, task="multilabel")
    with pytest.raises(ValueError, match="u1"):
        training_task([utterance(0, ["sad"]), utterance(1, ["sad"], task=None)])


def test_task_comes_from_the_corpus_protocol_into_the_preset():
    preset = load_preset("a1", "tiny")
    utts = [utterance(0, ["happy", "sad"]), utterance(1, ["angry", "sad"])]
    tasked = with_task(preset, utts)
    assert tasked["train"]["task"] == "multilabel" and "task" not in preset["train"]  # a copy
    assert labels_of(utts, tasked) == LABELS  # 'sad' is never dominant, but present
    assert with_task(preset, [utterance(0, ["sad"], task=None)]) is preset  # single-label data: unchanged
    with pytest.raises(ValueError, match="says train.task 'single_label'"):
        with_task({**preset, "train": {**preset["train"], "task": "single_label"}}, utts)
    with pytest.raises(ValueError, match="seed ensembles"):
        with_task({**preset, "train": {**preset["train"], "ensemble": 2}}, utts)


def test_pos_weight_is_negatives_over_positives_of_the_training_part():
    targets = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    assert presence_pos_weight(targets, "balanced").tolist() == pytest.approx([1 / 3, 1.0, 1.0])
    assert presence_pos_weight(targets, None) is None
    with pytest.raises(ValueError, match="3 emotions"):
        presence_pos_weight(targets, [1.0, 2.0])


def test_selection_metric_of_a_multilabel_run_is_mean_eq6_wa():
    assert selection_metric(TrainConfig(task="multilabel")) == "ml_wa"
    assert selection_metric(TrainConfig()) == "ua"
    with pytest.raises(ValueError, match="selects on 'ml_wa'"):
        selection_metric(TrainConfig(task="multilabel", select_on="wf1"))


def multilabel_items(n: int, seed: int = 0) -> UtteranceDataset:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = i % len(LABELS)
        target = np.zeros(len(LABELS), dtype=np.float32)
        target[label] = target[(label + 1) % len(LABELS)] = 1.0
        mel = rng.normal(size=(int(rng.integers(30, 50)), 128)).astype(np.float32) + label * 0.5
        items.append(Item(id=f"u{i}", label=label, text=WORDS[LABELS[label]], dialogue=f"d{i}", logmel=mel,
                          target=target))
    return UtteranceDataset(items)


def multilabel_model():
    preset = load_preset("a1", "tiny")
    preset["features"]["logmel"]["n_mels"] = 128
    preset["train"]["task"] = "multilabel"
    torch.manual_seed(0)
    return build_model("a1", preset, LABELS)


def test_multilabel_fit_uses_bce_and_selects_on_eq6(monkeypatch):
    calls = []
    bce = model_base.binary_cross_entropy

    def spy(logits, targets, pos_weight=None):
        calls.append((targets.shape, targets.dtype, pos_weight))
        return bce(logits, targets, pos_weight)

    def no_cross_entropy(*args, **kwargs):
        raise AssertionError("cross-entropy in a multilabel run")

    monkeypatch.setattr(model_base, "binary_cross_entropy", spy)
    monkeypatch.setattr(model_base, "cross_entropy", no_cross_entropy)
    model = multilabel_model()
    cfg = TrainConfig(epochs=2, batch_size=4, seed=3, task="multilabel", pos_weight="balanced")
    result = fit(model, multilabel_items(12), multilabel_items(6, seed=1), cfg, device=torch.device("cpu"),
                 progress=False)
    assert calls and all(shape[1] == 3 and dtype == torch.float32 for shape, dtype, _ in calls)
    # pos_weight from the training part: each emotion present in 8 of 12 items -> 4 / 8
    assert calls[0][2].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert all("val_ml_wa" in r for r in result.history)
    best = max(r["val_ml_wa"] for r in result.history)
    assert next(r for r in result.history if r["epoch"] == result.best_epoch)["val_ml_wa"] == best


def test_base_loss_on_multi_hot_targets_is_bce_with_logits():
    model = multilabel_model()
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    loss = model.compute_loss({"logits": logits}, targets)
    assert float(loss) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))


def test_multilabel_model_saves_loads_and_predicts_per_emotion_probabilities(tmp_path):
    model = multilabel_model()
    fit(model, multilabel_items(8), None, TrainConfig(epochs=1, batch_size=4, task="multilabel"),
        device=torch.device("cpu"), progress=False)
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.preset["train"]["task"] == "multilabel"
    test = multilabel_items(5, seed=2)
    before, after = predict(model, test), predict(loaded, test)
    np.testing.assert_allclose(before["probs"], after["probs"], rtol=1e-5, atol=1e-6)
    logits = loaded({**make_collate(loaded.tokenize)(test.items)}, mode="both")["logits"]
    np.testing.assert_allclose(after["probs"], torch.sigmoid(logits).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert after["targets"].shape == (5, 3)
    assert len(presence_sets(after["probs"], LABELS)) == 5


def test_mosei_protocol_decides_the_task(tmp_path):
    """CMU-MOSEI's makhmudov2024 protocol is multi-label; its official protocol stays single-label."""
    from corpora.corpus_builders import build_mosei
    from emoflow.corpora.ingest import ingest
    from emoflow.storage import open_store

    build_mosei(tmp_path / "mosei")
    store = open_store(str(tmp_path / "store"))
    paper = ingest("mosei", str(tmp_path / "mosei"), store, options={"protocol": "makhmudov2024"}).utterances
    official = ingest("mosei", str(tmp_path / "mosei"), store).utterances
    assert training_task(paper) == "multilabel" and training_task(official) == "single_label"
