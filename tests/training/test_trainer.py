"""Trainer: reproducibility, resume after a crash, validation never from the test fold."""

import numpy as np
import pytest
import torch

from emoflow.models import build_model, load_preset
from emoflow.storage import open_store
from emoflow.training.data import BucketBatchSampler, Item, UtteranceDataset, make_collate
from emoflow.training.trainer import Checkpointer, TrainConfig, final_epochs, fit, predict

LABELS = ["angry", "happy", "neutral", "sad"]
WORDS = {"angry": "furious shouting", "happy": "wonderful joy", "neutral": "the table", "sad": "lonely tears"}


def make_items(n: int, seed: int = 0) -> UtteranceDataset:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = i % len(LABELS)
        frames = int(rng.integers(30, 60))
        mel = rng.normal(size=(frames, 128)).astype(np.float32) + label * 0.5
        items.append(Item(id=f"u{i}", label=label, text=WORDS[LABELS[label]], dialogue=f"d{i}", logmel=mel))
    return UtteranceDataset(items)


def tiny_preset() -> dict:
    preset = load_preset("a1", "tiny")
    preset["features"]["logmel"]["n_mels"] = 128
    return preset


def train_once(tmp_path, name: str, epochs: int = 3, crash_after: int | None = None, checkpoint: bool = True):
    torch.manual_seed(0)
    model = build_model("a1", tiny_preset(), LABELS)
    cfg = TrainConfig(epochs=epochs, batch_size=4, seed=7)
    store = open_store(str(tmp_path / "store"))
    ck = Checkpointer(store, f"ck/{name}.pt") if checkpoint else None

    def after_epoch(epoch: int) -> None:
        if crash_after is not None and epoch == crash_after:
            raise KeyboardInterrupt("simulated kill")

    result = fit(model, make_items(16), make_items(8, seed=1), cfg, device=torch.device("cpu"),
                 checkpointer=ck, after_epoch=after_epoch, progress=False)
    return model, result


def test_same_seed_same_weights(tmp_path):
    a, ra = train_once(tmp_path, "a", checkpoint=False)
    b, rb = train_once(tmp_path, "b", checkpoint=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert ra.history == rb.history


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    ref, ref_result = train_once(tmp_path, "ref")
    with pytest.raises(KeyboardInterrupt):
        train_once(tmp_path, "killed", crash_after=1)
    resumed, resumed_result = train_once(tmp_path, "killed")  # the retry: same checkpoint key
    assert resumed_result.epochs_run == 3 and len(resumed_result.history) == 3
    for (k, v), (_, w) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), f"{k} differs after resume"
    assert ref_result.history == resumed_result.history


def test_checkpoints_leave_frozen_weights_out_and_resume_the_same(tmp_path):
    def run(name, crash_after=None):
        preset = tiny_preset()
        preset["model"]["text_encoder"]["freeze"] = True
        torch.manual_seed(0)
        model = build_model("a1", preset, LABELS)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        ck = Checkpointer(open_store(str(tmp_path / "store")), f"ck/{name}.pt")

        def after_epoch(epoch):
            if epoch == crash_after:
                raise KeyboardInterrupt("simulated kill")

        fit(model, make_items(16), make_items(8, seed=1), TrainConfig(epochs=3, batch_size=4, seed=7),
            device=torch.device("cpu"), checkpointer=ck, after_epoch=after_epoch, progress=False)
        return model, frozen, ck

    ref, frozen, ck = run("ref")
    assert frozen and any(k.startswith("text_encoder.") for k in frozen)
    saved = ck.load()
    assert not frozen & set(saved["model"]) and not frozen & set(saved["best_model"])
    assert set(saved["model"]) | frozen == set(ref.state_dict())
    with pytest.raises(KeyboardInterrupt):
        run("killed", crash_after=1)
    resumed, _, _ = run("killed")
    for (k, v), w in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), f"{k} differs after resume"


def test_best_epoch_kept_and_predict_shapes(tmp_path):
    model, result = train_once(tmp_path, "best", checkpoint=False)
    assert result.best_val_ua is not None
    assert result.best_epoch == max(range(len(result.history)), key=lambda i: result.history[i]["val_ua"]) + 1
    pred = predict(model, make_items(5, seed=3))
    assert pred["probs"].shape == (5, 4)
    assert np.allclose(pred["probs"].sum(1), 1.0, atol=1e-5)


def test_bucket_sampler_covers_everything_once_and_is_seeded():
    lengths = list(np.random.default_rng(0).integers(10, 500, size=103))
    sampler = BucketBatchSampler(lengths, 8, shuffle=True, seed=3)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(103))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < np.ptp(lengths) / 4  # batches hold similar lengths
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches


def test_collate_pads_with_masks():
    items = make_items(3)
    batch = make_collate(None)(items.items)
    lengths = [it.logmel.shape[0] for it in items.items]
    assert batch["logmel"].shape == (3, max(lengths), 128)
    assert batch["logmel_mask"].sum(1).tolist() == lengths
    assert float(batch["logmel"][0, lengths[0]:].abs().sum()) == 0.0


def test_final_epochs_is_median_of_best():
    assert final_epochs([3, 5, 4]) == 4
    assert final_epochs([2, 3]) == 3
    assert final_epochs([]) == 1


def test_scheduler_from_preset_dict():
    cfg = TrainConfig.from_preset({"train": {"scheduler": {"name": "halve_after", "constant_epochs": 8, "every": 2}, "epochs": 3}})
    assert cfg.scheduler == "halve_after" and cfg.scheduler_args == {"constant_epochs": 8, "every": 2}
    assert cfg.epochs == 3


def test_specaugment_and_chunks_are_reproducible(tmp_path):
    def run():
        torch.manual_seed(0)
        model = build_model("a1", tiny_preset(), LABELS)
        cfg = TrainConfig(epochs=2, batch_size=4, seed=1, specaugment="aggressive", chunk_frames=[20, 30])
        fit(model, make_items(12), None, cfg, device=torch.device("cpu"), progress=False)
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)
