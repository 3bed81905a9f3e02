"""Training-progress schedules survive the shorter final refit, and features.wave.max_seconds cuts
training waveforms."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from emoflow.models import build_model, load_preset
from emoflow.training.data import Item, UtteranceDataset
from emoflow.training.trainer import TrainConfig, fit, max_wave_samples

LABELS = ["ang", "hap", "neu", "sad"]


def wave_items(n=8, samples=8000):
    rng = np.random.default_rng(0)
    return UtteranceDataset([
        Item(id=f"u{i}", label=i % 4, text=["so angry", "so happy", "the table", "so sad"][i % 4], dialogue=f"d{i}",
             wave=(0.1 * rng.normal(size=samples - 97 * i)).astype(np.float32))
        for i in range(n)])


def a4_tiny(**train):
    preset = copy.deepcopy(load_preset("a4", "tiny"))
    preset["train"].update(train)
    torch.manual_seed(0)
    return preset, build_model("a4", preset, LABELS)


def masking_by_epoch(model, cfg, data):
    """A4's masking probability at the first step of every epoch of a fit."""
    seen = []
    original = model.set_progress

    def spy(progress):
        original(progress)
        seen.append(model.masking_probability())

    model.set_progress = spy
    fit(model, data, None, cfg, device=torch.device("cpu"), progress=False)
    per_epoch = len(seen) // cfg.epochs
    return [seen[e * per_epoch] for e in range(cfg.epochs)]


def test_final_refit_keeps_the_folds_masking_schedule():
    data = wave_items()
    preset, fold_model = a4_tiny(batch_size=4)
    fold = masking_by_epoch(fold_model, TrainConfig.from_preset(preset, epochs=4), data)
    _, final_model = a4_tiny(batch_size=4)
    final = masking_by_epoch(final_model, TrainConfig.from_preset(preset, epochs=2, schedule_epochs=4), data)
    assert final == fold[:2]
    assert fold[1] == pytest.approx(0.8 * (1 - 0.25 / 0.7))  # epoch 2 of 4: progress 0.25


def test_final_fit_of_a_run_uses_the_folds_epochs_as_its_schedule(tmp_path, monkeypatch):
    from emoflow.training import run

    seen = []
    monkeypatch.setattr(run, "fit", lambda model, data, val, cfg, **kw: seen.append(cfg))
    preset = load_preset("a1", "tiny")
    summary = {"folds": {"s1": {"best_epoch": 3}, "s2": {"best_epoch": 5}}}
    run._final_fit(summary, lambda: None, "a1", preset, LABELS, tmp_path, seed=0, dev=torch.device("cpu"),
                   final_epoch_count=None, checkpointer=lambda name: None, progress=False, results=None,
                   fold_epochs=20)
    (cfg,) = seen
    assert (cfg.epochs, cfg.schedule_epochs) == (4, 20)


def test_wave_max_seconds_cuts_training_waves():
    preset, model = a4_tiny(batch_size=4)
    assert max_wave_samples(load_preset("a4", "paper")) == 15 * 16000
    preset["features"]["wave"] = {"sample_rate": 16000, "max_seconds": 0.25}
    model.preset = preset
    lengths = []
    original = model.forward

    def spy(batch, mode="both"):
        lengths.append((batch["wave"].shape[1], int(batch["wave_mask"].sum(1).max())))
        return original(batch, mode)

    model.forward = spy
    fit(model, wave_items(samples=8000), None, TrainConfig.from_preset(preset, epochs=1),
        device=torch.device("cpu"), progress=False)
    assert lengths and all(n == 4000 and real == 4000 for n, real in lengths)
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        max_wave_samples({"features": {"wave": {"max_seconds": 0}}})
