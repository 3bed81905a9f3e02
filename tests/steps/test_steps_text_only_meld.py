"""A text-only corpus (MELD CSVs without media) through the pipeline steps: ingest, transcribe,
features and validation keep every utterance (nothing quarantined, no ASR, no log-mel), the
official split trains on train and tests on dev, evaluation and registration work. The real-data
test runs the same fold plan and dialogue batching on ../shared/data/meld (skipped when absent)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from conftest import SHARED_DATA
from corpora.corpus_builders import MELD_HEADER, meld_row
from emoflow import steps
from emoflow.corpora import read_manifest

EMOTIONS = ["neutral", "joy", "surprise", "anger", "sadness"]
LINES = ["Oh my God.", "What’s that?", "I can’t believe it!", "Okay.", "No way!", "That is so sweet.", "Get out."]


def write_meld(root, n_train=12, n_dev=4):
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows, sr = [MELD_HEADER], 1
        for d in range(n):
            for u in range(2 + d % 3):
                k = d * 3 + u
                rows.append(meld_row(sr, LINES[k % len(LINES)], ["Ross", "Rachel"][u % 2], EMOTIONS[k % 5], d, u))
                sr += 1
        (root / f"{split}_sent_emo.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def tiny_text_preset(path):
    from emoflow.models import load_preset

    p = copy.deepcopy(load_preset("a1", "tiny"))
    p.update(name="tiny-text", inputs=["text"])
    p["train"].update(batch_by="dialogue", class_weights="inverse_sqrt_frequency", select_on="wf1", epochs=1)
    path.write_text(yaml.safe_dump(p))
    return str(path)


def test_text_only_meld_flows_through_the_steps(tmp_path):
    corpus, store = write_meld(tmp_path / "meld"), str(tmp_path / "store")
    m0, m1, m2 = (str(tmp_path / f"m{i}.jsonl") for i in range(3))
    ing = steps.ingest("meld", str(corpus), store, m0, {"copy_audio": False})
    n = 2 * 12 + 2 * 4 + sum(d % 3 for d in range(12)) + sum(d % 3 for d in range(4))
    assert (ing["in"], ing["accepted"], ing["quarantined"], ing["text_only"]) == (n, n, 0, n)
    tr = steps.transcribe(m0, m1, backend="auto", store=store)
    assert (tr["accepted"], tr["quarantined"]) == (n, 0)
    assert tr["corpora"]["meld"]["reference"] == n and tr["corpora"]["meld"]["asr"] == 0  # no ASR
    feats = steps.features(m1, m2, store)
    assert feats["utterances"] == n
    utts = read_manifest(m2)
    assert len(utts) == n and all(u.audio is None and "logmel" not in u.extra for u in utts)
    assert {u.split for u in utts} == {"train", "dev"}

    out = tmp_path / "train"
    preset = tiny_text_preset(tmp_path / "tiny-text.yaml")
    result = steps.train(m2, store, "a1", preset, str(out), fold_scheme="official", progress=False)
    pred = json.loads((out / "predictions.json").read_text())
    assert list(pred["folds"]) == ["official"]
    fold = pred["folds"]["official"]
    assert sorted(fold["ids"]) == sorted(u.id for u in utts if u.split == "dev")  # tested on dev only
    assert fold["test_groups"] == ["dev"] and all(v.startswith("train_dia") for v in fold["val_groups"])
    assert result["final_epochs"] == 1 and (out / "model" / "model.safetensors").exists()

    ev = steps.evaluate(str(out / "predictions.json"), str(tmp_path / "eval"), corpus="meld")
    assert 0 <= ev["metrics"]["pooled"]["wf1"] <= 1
    reg = steps.register([str(out)], [str(tmp_path / "eval")], store, model_name="meld-text", winner_metric="wf1")
    assert reg["ref"] == "meld-text@v1" and reg["winner"] == "a1"

    from emoflow.models import load_model
    from emoflow.registry import Registry
    from emoflow.storage import open_store

    Registry(open_store(store)).download("meld-text@v1", tmp_path / "dl")
    model = load_model(tmp_path / "dl" / "model")
    assert model.inputs == {"text"} and model.speech is None


MELD = SHARED_DATA / "meld"


@pytest.mark.realdata
@pytest.mark.skipif(not MELD.is_dir(), reason=f"{MELD} not present")
def test_real_meld_official_fold_and_dialogue_batches(tmp_path):
    from emoflow.corpora import ingest
    from emoflow.evaluation.folds import make_folds
    from emoflow.storage import open_store
    from emoflow.training.data import DialogueBatchSampler, load_items

    utts = ingest("meld", str(MELD), open_store(tmp_path / "store"), copy_audio=False).utterances
    fold = make_folds(utts, scheme="official")[0]
    assert len(fold.test_ids) == 1109 and len(fold.train_ids) + len(fold.val_ids) == 9989
    by_id = {u.id: u for u in utts}
    assert {by_id[i].split for i in fold.test_ids} == {"dev"}
    assert not {by_id[i].dialogue for i in fold.val_ids} & {by_id[i].dialogue for i in fold.train_ids}
    labels = sorted({u.label for u in utts})
    train = load_items([by_id[i] for i in fold.train_ids], None, labels, {"text"})
    sampler = DialogueBatchSampler([it.dialogue for it in train.items], 64, shuffle=True, seed=0)
    seen = []
    for batch in sampler:
        dias = [train.items[i].dialogue for i in batch]
        for d in set(dias):
            idx = [by_id[train.items[i].id].extra["utterance_index"] for i in batch if train.items[i].dialogue == d]
            assert idx == sorted(idx)  # utterance order
        seen += batch
    assert sorted(seen) == list(range(len(train)))
    assert len(sampler) < len({it.dialogue for it in train.items}) / 3  # several dialogues per batch
