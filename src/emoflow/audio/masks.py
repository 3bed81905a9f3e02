"""Padding masks shared by the speech encoders and the models (real frames first, padding last)."""

import torch


def lengths_from_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """[B,T] bool/long mask -> [B] long lengths; masks must be left-aligned (real frames first)."""
    if mask.dim() != 2:
        raise ValueError(f"{name} must be [B,T], got shape {tuple(mask.shape)}")
    lengths = mask.long().sum(dim=1)
    if not torch.equal(time_mask(lengths, mask.shape[1]), mask.bool()):
        bad = (time_mask(lengths, mask.shape[1]) != mask.bool()).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name}: real frames must come first (padding at the end); bad rows {bad}")
    if (lengths == 0).any():
        raise ValueError(f"{name}: rows {(lengths == 0).nonzero().flatten().tolist()} have no real frames")
    return lengths


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[B] lengths -> [B,size] bool mask."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]
