"""SpecAugment (time and frequency masks) and random T-frame chunks, on the fly in torch, seeded.

Policies (Park et al. 2019 define LB/LD for 80 mel bins; here for 128-bin log-mel):

- ``conservative``: 1 frequency mask of width 0..15 bins, 1 time mask of width 0..25 frames,
  a time mask covering at most 10 % of the real frames (close to LB).
- ``aggressive``: 2 frequency masks of 0..27 bins, 2 time masks of 0..50 frames, each at most
  20 % of the real frames (close to LD).

A policy can also be a dict with the same keys (see ``POLICIES``). Masked cells get
``fill`` (0.0: the mean of segment-normalised log-mel). Frames beyond a clip's real length
(``mask`` False) are never chosen as time-mask positions and keep their values.

Random chunks (Padi et al. 2022): each training batch draws one length T from
{150, 200, 250, 300} frames and every utterance is cut to a random T-frame window; shorter
utterances are repeated (tiled) up to T, so no padding enters the network.
"""

from __future__ import annotations

import torch

POLICIES: dict[str, dict] = {
    "conservative": {"freq_masks": 1, "freq_width": 15, "time_masks": 1, "time_width": 25, "time_ratio": 0.10},
    "aggressive": {"freq_masks": 2, "freq_width": 27, "time_masks": 2, "time_width": 50, "time_ratio": 0.20},
    "none": {"freq_masks": 0, "freq_width": 0, "time_masks": 0, "time_width": 0, "time_ratio": 0.0},
}
CHUNK_LENGTHS = (150, 200, 250, 300)


def _policy(policy: str | dict) -> dict:
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown SpecAugment policy {policy!r}; known: {sorted(POLICIES)}")
        return dict(POLICIES[policy])
    unknown = set(policy) - set(POLICIES["conservative"])
    if unknown:
        raise ValueError(f"SpecAugment policy: unknown keys {sorted(unknown)}")
    return {**POLICIES["none"], **policy}


class SpecAugment:
    """Random time and frequency masks for log-mel batches [B, T, F] (or one [T, F]).

    ``SpecAugment("aggressive", seed=0)(feats, mask)`` returns a masked copy; the same seed
    gives the same masks. ``mask`` [B, T] bool marks real frames (True).
    """

    def __init__(self, policy: str | dict = "conservative", seed: int | None = None, fill: float = 0.0):
        self.policy = _policy(policy)
        self.fill = fill
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else torch.seed())

    def _randint(self, high: int) -> int:
        """Uniform integer in [0, high] (inclusive)."""
        return int(torch.randint(0, max(high, 0) + 1, (1,), generator=self.generator))

    def __call__(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        single = feats.dim() == 2
        x = feats.unsqueeze(0) if single else feats
        if x.dim() != 3:
            raise ValueError(f"SpecAugment expects [T, F] or [B, T, F], got shape {tuple(feats.shape)}")
        x = x.clone()
        b, t, f = x.shape
        if mask is None:
            lengths = [t] * b
        else:
            m = mask.unsqueeze(0) if mask.dim() == 1 else mask
            lengths = m.sum(dim=1).tolist()
        p = self.policy
        for i in range(b):
            n = int(lengths[i])
            for _ in range(p["freq_masks"]):
                w = self._randint(min(p["freq_width"], f))
                f0 = self._randint(f - w)
                x[i, :n, f0:f0 + w] = self.fill
            limit = min(p["time_width"], int(p["time_ratio"] * n))
            for _ in range(p["time_masks"]):
                w = self._randint(limit)
                t0 = self._randint(n - w)
                x[i, t0:t0 + w, :] = self.fill
        return x[0] if single else x

    def augment_batch(self, batch: dict) -> dict:
        """Copy of a model batch with ``logmel`` masked (uses ``logmel_mask`` when present)."""
        out = dict(batch)
        out["logmel"] = self(batch["logmel"], batch.get("logmel_mask"))
        return out


class ChunkSampler:
    """Random T-frame chunks: one T per batch from ``lengths``, a random window per utterance."""

    def __init__(self, lengths=CHUNK_LENGTHS, seed: int | None = None):
        if not lengths or min(lengths) < 1:
            raise ValueError(f"chunk lengths must be positive, got {lengths!r}")
        self.lengths = tuple(int(v) for v in lengths)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else torch.seed())

    def sample_length(self) -> int:
        return self.lengths[int(torch.randint(0, len(self.lengths), (1,), generator=self.generator))]

    def chunk(self, feats: torch.Tensor, length: int) -> torch.Tensor:
        """A random ``length``-frame window of one [T, F] utterance (tiled when shorter)."""
        return random_chunk(feats, length, self.generator)

    def __call__(self, utterances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of list-of-[T_i, F] → (logmel [B, T, F], logmel_mask [B, T] all True)."""
        if not utterances:
            raise ValueError("ChunkSampler: empty batch")
        length = self.sample_length()
        x = torch.stack([self.chunk(torch.as_tensor(u), length) for u in utterances])
        return x, torch.ones(x.shape[:2], dtype=torch.bool)


def random_chunk(feats: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``length``-frame window of [T, F] features; shorter inputs are tiled to ``length``."""
    t = feats.shape[0]
    if t == 0:
        raise ValueError("random_chunk: utterance has no frames")
    if t < length:
        reps = -(-length // t)
        feats = feats.repeat(reps, *([1] * (feats.dim() - 1)))
        t = feats.shape[0]
    start = int(torch.randint(0, t - length + 1, (1,), generator=generator))
    return feats[start:start + length]
