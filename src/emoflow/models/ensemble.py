"""Seed ensembles: several models of one architecture and preset, trained with different seeds,
served as one model that averages their class probabilities.

A preset asks for one with ``train.ensemble: N`` (N >= 2). The trainer fits each member on its
own (seeds ``seed``, ``seed + 1``, ...); `save_model` / `load_model` keep the members in one
``model.safetensors`` (keys ``members.<k>.*``) so the predictor and the registry see one model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ensemble_size(preset: dict) -> int:
    """Members the preset asks for (``train.ensemble``; 1 = a single model)."""
    n = (preset.get("train") or {}).get("ensemble", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"preset train.ensemble must be a positive integer, got {n!r}")
    return n


class SeedEnsemble(nn.Module):
    """Members with identical architecture and labels; ``logits`` = log of the mean probabilities."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members[1:], 1):
            if m.arch != first.arch or list(m.labels) != list(first.labels) or set(m.inputs) != set(first.inputs):
                raise ValueError(f"ensemble member {k} ({m.arch}, labels {m.labels}) does not match member 0 "
                                 f"({first.arch}, labels {first.labels})")
        self.members = nn.ModuleList(members)
        self.arch = first.arch
        self.inputs = set(first.inputs)
        self.modes = tuple(first.modes)
        self.labels = list(first.labels)
        self.num_classes = len(self.labels)
        self.tokenizer = first.tokenizer
        self.preset = copy.deepcopy(first.preset)
        self.preset.setdefault("train", {})["ensemble"] = len(members)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.members[0].tokenize(texts)

    def encoders(self) -> dict[str, nn.Module]:
        """Encoder configs are the same for every member: member 0's (see save_model)."""
        return self.members[0].encoders()

    def forward(self, batch: dict, mode: str = "both") -> dict[str, torch.Tensor]:
        outs = [m(batch, mode=mode) for m in self.members]
        probs = torch.stack([torch.softmax(o["logits"].float(), -1) for o in outs]).mean(0)
        out = {"logits": probs.clamp_min(1e-12).log()}
        if all(o.get("modality_weights") is not None for o in outs):
            out["modality_weights"] = torch.stack([o["modality_weights"].float() for o in outs]).mean(0)
        return out
