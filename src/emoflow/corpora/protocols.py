"""Named evaluation protocols of a corpus that replace its official split (the adapters' ``protocol``
option; a corpus's own splits stay its default).

``makhmudov2024`` (Makhmudov et al. 2024, Sec. 4.2 and Table 1): the official splits are pooled and
re-split 80 % train / 20 % test. Table 1's counts show how: every emotion's train count is
floor(0.8 × its total) (MELD without fear: 1846 + 1285 + 288 + 801 + 1308 + 5148 = 10,676 train,
2,674 test; CMU-MOSEI: 22,851 / 5,715 emotion labels). The paper does not say which utterances
went where (no seed, no grouping): :func:`stratified_resplit` draws them per label with a seed, at
utterance level (a dialogue or video may span train and test, as in any utterance-level re-split).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from emoflow.corpora.base import CorpusError

PROTOCOLS = ("official", "makhmudov2024")
TRAIN_SHARE = {"makhmudov2024": 0.8}


def check_protocol(corpus: str, protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise CorpusError(f"{corpus}: option protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return protocol


def stratified_resplit(items: Sequence, key: Callable[[object], str], train_share: float,
                       seed: int = 0) -> dict[str, str]:
    """``item.id → "train" | "test"``: for each value of ``key`` (the label), floor(train_share × n)
    of its n items, drawn with ``seed``, go to train and the rest to test."""
    if not 0.0 < float(train_share) < 1.0:
        raise CorpusError(f"train_share must be in (0, 1), got {train_share!r}")
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(str(key(item)), []).append(item)
    rng = np.random.default_rng(int(seed))
    out: dict[str, str] = {}
    for label in sorted(groups):
        members = sorted(groups[label], key=lambda it: it.id)
        n_train = math.floor(train_share * len(members) + 1e-9)
        order = rng.permutation(len(members))
        for rank, i in enumerate(order):
            out[members[i].id] = "train" if rank < n_train else "test"
    return out


def resplit(items: Sequence, protocol: str, seed: int) -> dict[str, dict[str, int]]:
    """Re-split utterances in place by ``protocol`` (stratified by label): ``split`` becomes
    train / test, the corpus's own split is kept in ``extra["official_split"]``. Returns
    {split: {label: count}} for the scan notes (to compare with the paper's table)."""
    split_of = stratified_resplit(items, lambda u: u.label, TRAIN_SHARE[protocol], seed)
    counts: dict[str, dict[str, int]] = {}
    for u in items:
        u.extra["official_split"] = u.split
        u.split = split_of[u.id]
        per = counts.setdefault(u.split, {})
        per[u.label] = per.get(u.label, 0) + 1
    return {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}
