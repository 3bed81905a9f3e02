"""Fixtures for the model tests: tiny models (built once) and variable-length batches."""

from __future__ import annotations

import pytest
import torch

from emoflow.models import discover

LABELS = ["ang", "hap", "neu", "sad"]
TEXTS = ["hello there", "I am so angry right now, leave me alone!", "ok", "what a lovely day it is"]
ARCHS = sorted(discover())  # every discovered architecture folder


def _uses(model, key):
    return key in model.inputs


def make_batch(model, lengths=(60, 41, 23), wave_lengths=(12000, 7000, 3100), texts=None, seed=0, garbage=True, dialogue=None):
    """A batch for `model` with real frames first; padded positions hold garbage when asked."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    texts = list(texts or TEXTS[:B])
    batch = {"labels": torch.arange(B) % len(LABELS)}
    if dialogue is not None:
        batch["dialogue"] = torch.tensor(dialogue)
    if _uses(model, "logmel"):
        n_mels = model.preset["features"]["logmel"]["n_mels"]
        T = max(lengths)
        lm = torch.randn(B, T, n_mels, generator=g)
        mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
        if garbage:
            lm = torch.where(mask[..., None], lm, 50 * torch.randn(B, T, n_mels, generator=g))
        batch.update(logmel=lm, logmel_mask=mask)
    if _uses(model, "wave"):
        S = max(wave_lengths)
        wave = 0.1 * torch.randn(B, S, generator=g)
        mask = torch.arange(S)[None] < torch.tensor(wave_lengths)[:, None]
        if garbage:
            wave = torch.where(mask, wave, 5 * torch.randn(B, S, generator=g))
        batch.update(wave=wave, wave_mask=mask)
    if _uses(model, "text"):
        tok = model.tokenize(texts)
        if garbage:
            pad = tok["attention_mask"] == 0
            tok["input_ids"] = torch.where(pad, torch.randint(1000, 2000, tok["input_ids"].shape, generator=g), tok["input_ids"])
        batch.update(tok)
    return batch


def one(batch, i, model):
    """Sample i of a batch alone, cut to its real length (no padding)."""
    out = {}
    if "logmel" in batch:
        n = int(batch["logmel_mask"][i].sum())
        out.update(logmel=batch["logmel"][i : i + 1, :n], logmel_mask=batch["logmel_mask"][i : i + 1, :n])
    if "wave" in batch:
        n = int(batch["wave_mask"][i].sum())
        out.update(wave=batch["wave"][i : i + 1, :n], wave_mask=batch["wave_mask"][i : i + 1, :n])
    if "input_ids" in batch:
        n = int(batch["attention_mask"][i].sum())
        out.update(input_ids=batch["input_ids"][i : i + 1, :n], attention_mask=batch["attention_mask"][i : i + 1, :n])
    out["labels"] = batch["labels"][i : i + 1]
    return out


def build_tiny(arch, seed=0):
    from emoflow.models import build_model, load_preset

    torch.manual_seed(seed)
    return build_model(arch, load_preset(arch, "tiny"), LABELS)


_CACHE: dict = {}


@pytest.fixture
def tiny(request):
    """tiny(arch) -> a tiny model in eval mode (built once per session; state restored per test)."""
    restore = []

    def get(arch):
        if arch not in _CACHE:
            _CACHE[arch] = build_tiny(arch)
        m = _CACHE[arch]
        restore.append((m, {k: v.clone() for k, v in m.state_dict().items()}))
        return m.eval()

    yield get
    for m, state in restore:
        m.load_state_dict(state)
        m.zero_grad(set_to_none=True)
        m.set_progress(0.0)
        m.eval()


class _Helpers:
    LABELS = LABELS
    TEXTS = TEXTS
    make_batch = staticmethod(make_batch)
    one = staticmethod(one)
    build_tiny = staticmethod(build_tiny)


@pytest.fixture
def mh():
    """Helper functions for model tests (batches, single samples, fresh tiny builds)."""
    return _Helpers
