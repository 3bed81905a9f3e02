"""Speaker normalisation as an explicit evaluation protocol.

Two protocols (names as in ``emoflow.evaluation.report``):

- ``strict``: no statistics of test speakers are used anywhere (the default);
- ``speaker-normalised``: every utterance's features are z-normalised with the mean and standard
  deviation of *its speaker's* utterances, all of them and without labels, test speakers included
  (the test speaker's unlabelled audio is assumed available, as in a deployed system that has
  heard the speaker before). Results under it are reported in their own section, never mixed
  with strict ones.

Pipeline form: the features step, given ``feature_config["speaker_norm"] = true``, computes the
statistics of every cached embedding per speaker (``write_speaker_stats``), stores them and marks
each utterance with ``extra["speaker_norm"]`` = the statistics' key; ``load_items`` then applies
them (``SpeakerNormalizer``). Array form for probes: ``zscore_by_group``.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Sequence

import numpy as np

from emoflow.config import config_hash

PROTOCOLS = ("strict", "speaker-normalised")
STATS_PREFIX = "speaker-stats"
EPS = 1e-5


def protocol_name(speaker_norm: bool) -> str:
    """Report protocol for a run with / without speaker normalisation."""
    return PROTOCOLS[1] if speaker_norm else PROTOCOLS[0]


def zscore_by_group(x: np.ndarray, groups: Sequence, eps: float = EPS) -> np.ndarray:
    """Rows of ``x`` z-normalised with the mean / std of the rows sharing their group."""
    x = np.asarray(x, dtype=np.float64)
    groups = np.asarray(groups)
    if len(groups) != len(x):
        raise ValueError(f"{len(groups)} groups for {len(x)} rows")
    out = np.empty_like(x)
    for g in np.unique(groups):
        idx = groups == g
        out[idx] = (x[idx] - x[idx].mean(0)) / (x[idx].std(0) + eps)
    return out.astype(np.float32)


def _speaker(utt) -> str:
    if not utt.speaker:
        raise ValueError(f"utterance {utt.id!r} has no speaker: the speaker-normalised protocol needs one")
    return str(utt.speaker)


def speaker_statistics(utterances, store) -> dict:
    """{speaker: {cache hash: {array name: (mean, std)}}} over each speaker's utterances.

    Frame arrays ("frames") use every real frame of the speaker; other arrays one row per utterance.
    """
    from emoflow.audio.embeddings import load_embedding

    sums: dict = defaultdict(lambda: defaultdict(dict))
    for u in utterances:
        spk = _speaker(u)
        for h, key in (u.extra.get("embeddings") or {}).items():
            for name, arr in load_embedding(store, key).items():
                a = np.asarray(arr, dtype=np.float64)
                rows = a if name == "frames" else a[None]
                acc = sums[spk][h].setdefault(name, [0, 0.0, 0.0])
                acc[0] += rows.shape[0]
                acc[1] = acc[1] + rows.sum(0)
                acc[2] = acc[2] + (rows ** 2).sum(0)
    stats: dict = {}
    for spk, by_hash in sums.items():
        for h, by_name in by_hash.items():
            for name, (n, s, s2) in by_name.items():
                mean = s / n
                std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))
                stats.setdefault(spk, {}).setdefault(h, {})[name] = (mean, std)  # float64: see apply()
    return stats


def write_speaker_stats(utterances, store) -> tuple[list, str]:
    """Compute and store per-speaker statistics; return (utterances marked with the key, key)."""
    import dataclasses

    stats = speaker_statistics(utterances, store)
    flat = {}
    for spk, by_hash in stats.items():
        for h, by_name in by_hash.items():
            for name, (mean, std) in by_name.items():
                flat[f"{spk}|{h}|{name}|mean"] = mean
                flat[f"{spk}|{h}|{name}|std"] = std
    buf = io.BytesIO()
    np.savez(buf, **flat)
    ids = sorted(f"{u.id}:{k}" for u in utterances for k in (u.extra.get("embeddings") or {}).values())
    key = f"{STATS_PREFIX}/{config_hash(ids)}.npz"
    store.put_bytes(key, buf.getvalue())
    marked = [dataclasses.replace(u, extra={**u.extra, "speaker_norm": key}) for u in utterances]
    return marked, key


class SpeakerNormalizer:
    """Applies stored per-speaker statistics to an utterance's cached embeddings."""

    def __init__(self, flat: dict[str, np.ndarray], key: str = ""):
        self.flat = flat
        self.key = key

    @classmethod
    def from_utterances(cls, utterances, store) -> "SpeakerNormalizer | None":
        """The normaliser the utterances are marked with; None when none is (strict protocol).

        Mixed marking (some utterances normalised, some not, or two statistics files) is an error.
        """
        keys = {u.extra.get("speaker_norm") for u in utterances}
        if keys == {None} or not keys:
            return None
        if len(keys) > 1:
            raise ValueError(f"utterances mix speaker-normalisation statistics {sorted(map(str, keys))}; "
                             "a run is either strict or speaker-normalised")
        key = keys.pop()
        with np.load(io.BytesIO(store.get_bytes(key))) as z:
            return cls({k: z[k] for k in z.files}, key)

    def apply(self, utt, cache_hash: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Z-normalise each array of one cached embedding with the utterance's speaker statistics."""
        spk = _speaker(utt)
        out = {}
        for name, a in arrays.items():
            mean = self.flat.get(f"{spk}|{cache_hash}|{name}|mean")
            if mean is None:
                raise ValueError(f"no speaker statistics for speaker {spk!r} (utterance {utt.id!r}, {name})")
            std = self.flat[f"{spk}|{cache_hash}|{name}|std"]
            # in float64, as the predictor's SpeakerStats: with float32 statistics a small per-speaker
            # std turns the rounding error of (a - mean) into a visible bias of the normalised values
            out[name] = ((np.asarray(a, np.float64) - np.asarray(mean, np.float64))
                         / (np.asarray(std, np.float64) + EPS)).astype(np.float32)
        return out
