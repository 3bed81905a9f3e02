"""SpecAugment policies (seeded, bounded masks) and random T-frame chunks."""

import pytest
import torch

from emoflow.audio.specaugment import CHUNK_LENGTHS, POLICIES, ChunkSampler, SpecAugment, random_chunk


def masked_cells(out):
    return out == 0.0


def test_seeded_and_input_untouched():
    x = torch.randn(4, 300, 128) + 5.0  # no zeros before masking
    a = SpecAugment("aggressive", seed=3)(x)
    b = SpecAugment("aggressive", seed=3)(x)
    c = SpecAugment("aggressive", seed=4)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not (x == 0).any()


@pytest.mark.parametrize("name", ["conservative", "aggressive"])
def test_masks_respect_policy_bounds(name):
    p = POLICIES[name]
    aug = SpecAugment(name, seed=0)
    x = torch.randn(64, 300, 128) + 5.0
    out = aug(x)
    zero = masked_cells(out)
    full_time = zero.all(dim=2)  # frames fully masked (time masks)
    full_freq = zero.all(dim=1)  # bins fully masked (frequency masks)
    assert full_time.sum(1).max() <= p["time_masks"] * min(p["time_width"], int(p["time_ratio"] * 300))
    assert full_freq.sum(1).max() <= p["freq_masks"] * p["freq_width"]
    assert full_time.any() and full_freq.any()  # 64 draws: some masks are non-empty
    # every zero cell lies in a fully masked frame or bin
    assert torch.equal(zero, full_time[:, :, None] | full_freq[:, None, :])


def test_aggressive_masks_more_than_conservative():
    x = torch.randn(200, 300, 128) + 5.0
    cons = masked_cells(SpecAugment("conservative", seed=1)(x)).float().mean()
    aggr = masked_cells(SpecAugment("aggressive", seed=1)(x)).float().mean()
    assert aggr > 1.5 * cons > 0


def test_padding_frames_untouched_and_batch_dict():
    x = torch.randn(8, 300, 128) + 5.0
    mask = torch.zeros(8, 300, dtype=torch.bool)
    mask[:, :100] = True
    batch = {"logmel": x, "logmel_mask": mask, "labels": torch.zeros(8)}
    out = SpecAugment("aggressive", seed=0).augment_batch(batch)
    assert torch.equal(out["logmel"][:, 100:], x[:, 100:])
    assert out["labels"] is batch["labels"] and out["logmel"] is not x
    single = SpecAugment("conservative", seed=0)(x[0])
    assert single.shape == (300, 128)


def test_bad_policy_and_shape():
    with pytest.raises(ValueError, match="unknown SpecAugment policy"):
        SpecAugment("wild")
    with pytest.raises(ValueError, match="unknown keys"):
        SpecAugment({"freq_mask": 1})
    with pytest.raises(ValueError, match="shape"):
        SpecAugment()(torch.zeros(2, 3, 4, 5))


def test_chunks():
    sampler = ChunkSampler(seed=0)
    seen = {sampler.sample_length() for _ in range(200)}
    assert seen == set(CHUNK_LENGTHS)
    long = torch.arange(1000.0)[:, None].repeat(1, 4)
    utts = [long, torch.arange(70.0)[:, None].repeat(1, 4)]
    x, mask = ChunkSampler(seed=1)(utts)
    t = x.shape[1]
    assert t in CHUNK_LENGTHS and x.shape == (2, t, 4) and mask.all()
    first = x[0, :, 0]
    assert torch.equal(first, torch.arange(first[0], first[0] + t))  # a contiguous window
    short = x[1, :, 0]
    assert set(short.tolist()) <= set(range(70)) and len(set(short.tolist())) == 70  # tiled, all frames
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_chunk(long, 150, g1), random_chunk(long, 150, g2))
    with pytest.raises(ValueError, match="no frames"):
        random_chunk(torch.zeros(0, 4), 150)
