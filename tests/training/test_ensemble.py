"""Seed ensembles (preset train.ensemble): trained member by member, saved and served as one model."""

import json

import pytest
import torch

from emoflow.models import SeedEnsemble, build_model, ensemble_size, load_model, load_preset, save_model
from emoflow.training.data import load_items, make_collate
from emoflow.training.run import run_training


def _preset(n: int) -> dict:
    preset = load_preset("a1", "tiny")
    preset["train"]["ensemble"] = n
    return preset


def test_ensemble_size_checks_the_preset():
    assert ensemble_size({}) == 1 and ensemble_size({"train": {"ensemble": 3}}) == 3
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError, match="train.ensemble"):
            ensemble_size({"train": {"ensemble": bad}})


def test_ensemble_averages_member_probabilities(demo, tmp_path):
    utts, store, _ = demo
    labels = sorted({u.label for u in utts})
    members = []
    for k in range(3):
        torch.manual_seed(k)
        members.append(build_model("a1", _preset(1), labels).eval())
    ens = SeedEnsemble(members).eval()
    data = load_items(utts[:4], store, labels, set(ens.inputs))
    batch = make_collate(ens.tokenize)([data[i] for i in range(4)])
    with torch.inference_mode():
        probs = torch.softmax(ens(batch)["logits"], -1)
        expected = torch.stack([torch.softmax(m(batch)["logits"], -1) for m in members]).mean(0)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert not torch.allclose(expected, torch.softmax(members[0](batch)["logits"], -1), atol=1e-4)
    save_model(ens, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, SeedEnsemble) and len(back.members) == 3
    assert json.loads((tmp_path / "m" / "preset.json").read_text())["train"]["ensemble"] == 3
    with torch.inference_mode():
        assert torch.allclose(torch.softmax(back(batch)["logits"], -1), probs, atol=1e-6)
    other = build_model("a1", _preset(1), labels[:-1])
    with pytest.raises(ValueError, match="does not match member 0"):
        SeedEnsemble([members[0], other])


def test_run_training_fits_every_member_and_member_zero_is_the_single_model(demo, tmp_path):
    utts, store, _ = demo
    single = run_training(utts, store, "a1", _preset(1), tmp_path / "one", epochs=2, final_epoch_count=2,
                          progress=False)
    both = run_training(utts, store, "a1", _preset(2), tmp_path / "two", epochs=2, final_epoch_count=2,
                        checkpoint_prefix="ck", progress=False)
    assert set(both["folds"]) == set(single["folds"])
    for name, fold in both["folds"].items():
        assert len(fold["member_best_epochs"]) == 2 and len(fold["history"]) == 2
        # member 1 is selected on another training session, never on the test one
        first, second = fold["member_val_groups"]
        assert first == fold["val_groups"] and second != first
        assert not set(second) & set(fold["test_groups"])
        # the folds' test predictions are the ensemble's, not member 0's
        assert fold["probs"] != single["folds"][name]["probs"]
    ens, one = load_model(tmp_path / "two" / "model"), load_model(tmp_path / "one" / "model")
    assert isinstance(ens, SeedEnsemble) and len(ens.members) == 2
    # member 0 uses the run's seed: bit-identical to the single model; member 1 has its own seed
    for (k, a), b in zip(ens.members[0].state_dict().items(), one.state_dict().values()):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, b) for a, b in zip(ens.members[1].state_dict().values(),
                                                     one.state_dict().values()))
    assert store.list("ck") == []  # a finished run drops its checkpoints


def test_a_fold_task_drops_only_its_own_checkpoints(demo, tmp_path):
    utts, store, _ = demo
    first = run_training(utts, store, "a1", _preset(2), tmp_path / "f1", epochs=1, only_fold="fold1-S1",
                         skip_final=True, checkpoint_prefix="ck2", progress=False)
    assert store.list("ck2") == []
    other = f"ck2/a1-{first['run_key']}/fold2-S2.pt"  # another fold task of the same run, mid-training
    store.put_bytes(other, b"x")
    run_training(utts, store, "a1", _preset(2), tmp_path / "f2", epochs=1, only_fold="fold1-S1",
                 skip_final=True, checkpoint_prefix="ck2", progress=False)
    assert store.list("ck2") == [other]
