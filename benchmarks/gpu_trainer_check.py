"""GPU check of the trainer: every `tiny` preset (and A1 `paper`, random weights) trains on CUDA
with bf16 autocast, resumes from a checkpoint to the same weights, and reports steps per second.

    python benchmarks/gpu_trainer_check.py

Runs on CPU too (slowly); prints one line per preset and the CUDA/CPU device it used.
"""

import time

import numpy as np
import torch

from emoflow.models import build_model, load_preset
from emoflow.storage import open_store
from emoflow.training.data import Item, UtteranceDataset
from emoflow.training.trainer import Checkpointer, TrainConfig, fit, pick_device, predict

LABELS = ["angry", "happy", "neutral", "sad"]


def items(n: int, seconds: float = 3.0, seed: int = 0) -> UtteranceDataset:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = int(seconds * 100 * rng.uniform(0.5, 1.0))
        out.append(Item(id=f"u{i}", label=i % 4, text="what a wonderful day it is", dialogue=f"d{i // 4}",
                        logmel=rng.normal(size=(frames, 128)).astype(np.float32),
                        wave=(0.1 * rng.normal(size=frames * 160)).astype(np.float32)))
    return UtteranceDataset(out)


def main() -> None:
    device = pick_device()
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'})")
    store = open_store("/tmp/gpu-check-store")
    train, val = items(64), items(16, seed=1)
    for arch, name in [("a1", "tiny"), ("a2", "tiny"), ("a3", "tiny"), ("a4", "tiny"), ("a1", "paper")]:
        preset = load_preset(arch, name)
        if name == "paper":
            preset["model"]["text_encoder"] = {**preset["model"]["text_encoder"], "init": "random", "tokenizer": "minilm"}
        cfg = TrainConfig.from_preset(preset, epochs=3, batch_size=16, seed=3)
        torch.manual_seed(0)
        model = build_model(arch, preset, LABELS)
        started = time.time()
        res = fit(model, train, val, cfg, device=device, progress=False, checkpointer=Checkpointer(store, f"{arch}-{name}-ref.pt"))
        seconds = time.time() - started
        steps = cfg.epochs * ((len(train) + cfg.batch_size - 1) // cfg.batch_size)
        # crash after epoch 1, resume: same weights as the uninterrupted run
        torch.manual_seed(0)
        again = build_model(arch, preset, LABELS)
        ck = Checkpointer(store, f"{arch}-{name}-killed.pt")

        def crash(epoch):
            if epoch == 1:
                raise KeyboardInterrupt

        try:
            fit(again, train, val, cfg, device=device, progress=False, checkpointer=ck, after_epoch=crash)
        except KeyboardInterrupt:
            pass
        torch.manual_seed(0)
        again = build_model(arch, preset, LABELS)
        fit(again, train, val, cfg, device=device, progress=False, checkpointer=ck)
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        close = max(float((a.float() - b.float()).abs().max()) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        probs = predict(model, val, device=device)["probs"]
        print(f"{arch} {name}: {steps / seconds:6.1f} steps/s (batch 16, 3 s clips), losses "
              f"{[round(h['loss'], 3) for h in res.history]}, finite {bool(np.isfinite(probs).all())}, "
              f"resume identical {same} (max diff {close:.2e})")


if __name__ == "__main__":
    main()
