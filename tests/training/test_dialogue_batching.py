"""Dialogue batches (whole dialogues, in order, seeded), dialogue-ordered prediction, class weights
from the training part only, selection on validation weighted F1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from emoflow.training.data import (
    BucketBatchSampler, DialogueBatchSampler, Item, UtteranceDataset, make_batch_sampler, make_collate,
)
from emoflow.training.trainer import TrainConfig, class_weights, fit, predict, weighted_f1

LABELS = ["ang", "hap", "neu", "sad"]
WORDS = ["fine", "no way", "great news everyone", "leave me alone", "what", "oh my god", "okay then"]


def dialogue_items(n_dialogues=9, seed=0, interleave=False) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    for d in range(n_dialogues):
        for u in range(1 + d % 6):
            items.append(Item(id=f"d{d}_u{u}", label=int(rng.integers(0, 4)), text=f"{WORDS[(d + u) % 7]} {u}",
                              dialogue=f"dia{d}"))
    if interleave:  # dialogues interleaved in the dataset; utterance order within each kept
        items.sort(key=lambda it: (int(it.id.split("_u")[1]), it.id))
    return items


def check_whole_dialogues(items, batches, batch_size):
    seen = [i for b in batches for i in b]
    assert sorted(seen) == list(range(len(items)))  # every utterance exactly once
    where = {}
    for bi, b in enumerate(batches):
        assert len(b) <= batch_size or len({items[i].dialogue for i in b}) == 1  # long dialogue: alone
        for i in b:
            where.setdefault(items[i].dialogue, set()).add(bi)
        for d in {items[i].dialogue for i in b}:
            positions = [i for i in b if items[i].dialogue == d]
            assert positions == sorted(positions)  # utterance (dataset) order within the dialogue
            assert positions == [k for k, it in enumerate(items) if it.dialogue == d]  # and all of it
    assert all(len(v) == 1 for v in where.values())  # a dialogue is never split across batches


@pytest.mark.parametrize("interleave", [False, True])
def test_dialogue_sampler_whole_dialogues_in_order(interleave):
    items = dialogue_items(interleave=interleave)
    sampler = DialogueBatchSampler([it.dialogue for it in items], 8, shuffle=True, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(sampler) == len(batches)
        check_whole_dialogues(items, batches, 8)
    small = DialogueBatchSampler([it.dialogue for it in items], 2, shuffle=False)
    check_whole_dialogues(items, list(small), 2)


def test_dialogue_sampler_is_seeded():
    dias = [it.dialogue for it in dialogue_items(n_dialogues=30)]

    def run(seed, epoch, shuffle=True):
        s = DialogueBatchSampler(dias, 10, shuffle=shuffle, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(0, 1) == run(0, 1)
    assert run(0, 1) != run(0, 2) and run(0, 1) != run(1, 1)
    unshuffled = [i for b in run(5, 7, shuffle=False) for i in b]
    assert unshuffled == list(range(len(dias)))  # no shuffle: dataset order


def test_make_batch_sampler_kinds():
    items = dialogue_items()
    assert isinstance(make_batch_sampler(items, 4, shuffle=True), BucketBatchSampler)
    assert isinstance(make_batch_sampler(items, 4, batch_by="dialogue", shuffle=True), DialogueBatchSampler)
    with pytest.raises(ValueError, match="unknown batch_by 'speaker'"):
        make_batch_sampler(items, 4, batch_by="speaker", shuffle=True)


def test_collate_dialogue_key_follows_the_batch():
    items = dialogue_items()
    sampler = DialogueBatchSampler([it.dialogue for it in items], 8, shuffle=True, seed=0)
    batch = make_collate(None)([items[i] for i in next(iter(sampler))])
    names = [items[i].dialogue for i in next(iter(sampler))]
    assert batch["dialogue"].tolist() == [sorted(set(names), key=names.index).index(n) for n in names]


def text_model(**train):
    from emoflow.models import build_model, load_preset

    p = copy.deepcopy(load_preset("a1", "tiny"))
    p["inputs"] = ["text"]
    p["model"]["dropout"] = 0.0
    p["train"].update(train)
    torch.manual_seed(0)
    return build_model("a1", p, LABELS)


def test_predict_by_dialogue_gives_context_and_dataset_order():
    items = dialogue_items(interleave=True)  # consecutive items belong to different dialogues
    data = UtteranceDataset(items)
    model = text_model(batch_by="dialogue")
    by_dialogue = predict(model, data, batch_size=8)  # the preset's batch_by
    assert by_dialogue["ids"] == [it.id for it in items]
    assert by_dialogue["labels"].tolist() == [it.label for it in items]
    # each dialogue alone, as one batch: the same probabilities (the Bi-GRU saw the whole dialogue)
    for d in sorted({it.dialogue for it in items}):
        members = [it for it in items if it.dialogue == d]
        alone = predict(model, UtteranceDataset(members), batch_size=64, batch_by="utterance")
        rows = [by_dialogue["ids"].index(it.id) for it in members]
        np.testing.assert_allclose(by_dialogue["probs"][rows], alone["probs"], atol=1e-5)
    by_utterance = predict(model, data, batch_size=8, batch_by="utterance")
    assert by_utterance["ids"] == by_dialogue["ids"]
    assert not np.allclose(by_utterance["probs"], by_dialogue["probs"], atol=1e-4)


def test_class_weights_formula():
    w = class_weights([0, 0, 0, 0, 1, 2, 2], 4, "inverse_sqrt_frequency")
    raw = np.array([(7 / 4) ** 0.5, 7 ** 0.5, (7 / 2) ** 0.5])
    np.testing.assert_allclose(w[:3].numpy(), raw / raw.mean(), rtol=1e-6)
    assert float(w[3]) == 1.0  # absent class
    w = class_weights([0, 1, 1, 1], 2, "inverse_frequency")
    np.testing.assert_allclose(w.numpy(), np.array([4, 4 / 3]) / np.mean([4, 4 / 3]), rtol=1e-6)
    assert class_weights([0, 1], 2, None) is None
    assert class_weights([0, 1], 2, [1, 3]).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="unknown class_weights"):
        class_weights([0], 2, "balanced")
    with pytest.raises(ValueError, match="2 classes"):
        class_weights([0], 2, [1.0])


def test_fit_weights_come_from_the_training_part_only():
    train_items = [it for it in dialogue_items(n_dialogues=6)]
    for k, it in enumerate(train_items):
        it.label = 0 if k % 4 else 1  # training: mostly class 0
    val_items = [Item(id=f"v{k}", label=3, text="leave me alone", dialogue=f"v{k // 3}") for k in range(9)]
    model = text_model(batch_by="dialogue", class_weights="inverse_sqrt_frequency", select_on="wf1")
    seen = []
    original = model.compute_loss

    def spy(out, labels, class_weight=None):
        seen.append(class_weight.detach().cpu().clone())
        return original(out, labels, class_weight=class_weight)

    model.compute_loss = spy
    cfg = TrainConfig.from_preset(model.preset, epochs=2)
    assert (cfg.batch_by, cfg.class_weights, cfg.select_on) == ("dialogue", "inverse_sqrt_frequency", "wf1")
    result = fit(model, UtteranceDataset(train_items), UtteranceDataset(val_items), cfg, progress=False)
    expected = class_weights([it.label for it in train_items], 4, "inverse_sqrt_frequency")
    assert seen and all(torch.equal(w, expected) for w in seen)
    assert float(expected[3]) == 1.0  # class 3 only in validation: not counted
    assert all("val_wf1" in r for r in result.history)
    assert result.best_epoch == 1 + int(np.argmax([r["val_wf1"] for r in result.history]))
    assert result.best_val_ua == result.history[result.best_epoch - 1]["val_ua"]


def test_class_weights_need_a_model_that_takes_them():
    # the contract is declared on EmotionModel: an override without class_weight is refused when
    # the class is defined, and fit trains EmotionModels only
    from emoflow.models import EmotionModel

    with pytest.raises(TypeError, match="compute_loss must take class_weight"):
        class NoWeights(EmotionModel):  # noqa: F841
            def compute_loss(self, out, labels):
                return out["logits"].sum()

    cfg = TrainConfig(epochs=1, class_weights="inverse_frequency")
    data = UtteranceDataset(dialogue_items(n_dialogues=2))
    with pytest.raises(TypeError, match="fit trains an EmotionModel"):
        fit(torch.nn.Linear(1, 2), data, None, cfg, progress=False)


def test_weighted_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert weighted_f1(y, p) == pytest.approx(f1_score(y, p, average="weighted"))
