"""The trainer builds its optimizers from the preset's param_groups, in one place, and logs them."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from emoflow.models import build_model, load_preset
from emoflow.training.data import Item, UtteranceDataset
from emoflow.training.trainer import TrainConfig, fit

LABELS = ["angry", "happy", "neutral", "sad"]


def items(n=12):
    rng = np.random.default_rng(0)
    return UtteranceDataset([
        Item(id=f"u{i}", label=i % 4, text=["furious", "joy", "table", "tears"][i % 4], dialogue=f"d{i}",
             logmel=rng.normal(size=(int(rng.integers(30, 50)), 128)).astype(np.float32))
        for i in range(n)])


def test_fit_uses_and_logs_the_preset_param_groups(caplog):
    preset = copy.deepcopy(load_preset("a1", "tiny"))
    preset["train"]["param_groups"] = {"text_encoder": {"lr": 0.0}, "speech": {"freeze": True},
                                       "gru": {"lr": 1e-2, "weight_decay": 0.5}}
    torch.manual_seed(0)
    model = build_model("a1", preset, LABELS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="emoflow.training"):
        fit(model, items(), None, TrainConfig.from_preset(preset), device=torch.device("cpu"), progress=False)
    after = model.state_dict()
    for k in before:
        if k.startswith(("text_encoder.", "speech.")) and before[k].is_floating_point() and "running" not in k:
            assert torch.equal(before[k], after[k]), k  # lr 0 and frozen: unchanged
    assert not torch.equal(before["gru.weight_hh_l0"], after["gru.weight_hh_l0"])
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    text = caplog.text
    assert "param group text_encoder:" in text and "lr 0 " in text
    assert "param group gru:" in text and "lr 0.01 weight_decay 0.5" in text
    assert "param group rest:" in text and "frozen parameters" in text
