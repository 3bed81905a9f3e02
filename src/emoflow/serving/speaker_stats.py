"""Serving-time per-speaker running statistics for the speaker-normalised protocol.

    stats = SpeakerStats(max_speakers=1000, min_utterances=5, max_bytes=64 << 20)
    stats.update("spk-42", vector)          # after each request carrying a speaker field
    x = stats.normalize("spk-42", vector)   # z-normalised once the speaker has min_utterances,
                                            # else the vector unchanged (strict behaviour)
    out = stats.observe("spk-42", {"a|layers_mean": arr, ...})  # one utterance, several arrays:
                                            # update + normalise at once (None while strict)

Statistics are running means and variances (Welford, float64) per speaker and per feature name
(a speaker may carry several vectors, e.g. "whisper" and "speaker"). Memory is bounded twice: at
most ``max_speakers`` speakers and at most ``max_bytes`` of statistics; the least recently used
speaker is evicted first. Speakers never share state: one speaker's updates cannot change another's
normalisation. Thread-safe (one lock).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Collection

import numpy as np

from emoflow.evaluation.normalization import EPS  # training's std floor: online and cached inputs agree


class _Running:
    __slots__ = ("n", "mean", "m2")

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def merge(self, rows: np.ndarray) -> None:
        """Add every row of ``rows`` [N, D] (Chan et al.'s pairwise update)."""
        n_b = rows.shape[0]
        mean_b = rows.mean(0)
        m2_b = ((rows - mean_b) ** 2).sum(0)
        n = self.n + n_b
        d = mean_b - self.mean
        self.mean += d * (n_b / n)
        self.m2 += m2_b + d ** 2 * (self.n * n_b / n)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))

    @property
    def nbytes(self) -> int:
        return self.mean.nbytes + self.m2.nbytes + 64


class SpeakerStats:
    """Bounded, LRU-evicted running statistics per speaker (see module docstring)."""

    def __init__(self, max_speakers: int = 1000, min_utterances: int = 5, max_bytes: int = 64 << 20):
        if max_speakers < 1 or min_utterances < 1 or max_bytes < 1:
            raise ValueError(f"max_speakers, min_utterances and max_bytes must be >= 1, got "
                             f"{max_speakers}, {min_utterances}, {max_bytes}")
        self.max_speakers = int(max_speakers)
        self.min_utterances = int(min_utterances)
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[str, dict[str, _Running]] = OrderedDict()
        self._utterances: dict[str, int] = {}  # utterances seen through `observe`, per speaker
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    @staticmethod
    def _check(speaker, x) -> np.ndarray:
        if not isinstance(speaker, str) or not speaker:
            raise ValueError(f"speaker must be a non-empty string, got {speaker!r}")
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"speaker {speaker!r}: feature vector must be 1-D and non-empty, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"speaker {speaker!r}: feature vector has NaN or infinite values")
        return a

    def update(self, speaker: str, x, name: str = "default") -> int:
        """Add one utterance's vector to the speaker's statistics; returns the speaker's count."""
        a = self._check(speaker, x)
        with self._lock:
            feats = self._data.get(speaker) or {}
            run = feats.get(name)
            if run is not None and run.mean.shape != a.shape:
                raise ValueError(f"speaker {speaker!r} feature {name!r}: dimension {a.size}, "
                                 f"earlier {run.mean.size}")
            if run is None:
                run = _Running(a.size)
                if run.nbytes > self.max_bytes:
                    raise ValueError(f"one vector of {a.size} values exceeds max_bytes={self.max_bytes}")
                feats[name] = run
                self._bytes += run.nbytes
            run.update(a)
            self._data[speaker] = feats
            self._data.move_to_end(speaker)  # most recently used last
            self._evict()
            return run.n

    def _evict(self) -> None:
        while self._data and (len(self._data) > self.max_speakers or self._bytes > self.max_bytes):
            speaker, feats = self._data.popitem(last=False)
            self._bytes -= sum(r.nbytes for r in feats.values())
            self._utterances.pop(speaker, None)
            self.evictions += 1

    @staticmethod
    def speaker_bytes(arrays: dict, rows: Collection[str] = ()) -> int:
        """Bytes of statistics one speaker holds for arrays of these shapes (see ``observe``)."""
        sizes = [int(np.prod(np.shape(a)[1:] if k in rows else np.shape(a))) for k, a in arrays.items()]
        return sum(_Running(n).nbytes for n in sizes)

    def observe(self, speaker: str, arrays: dict, rows: Collection[str] = ()) -> dict[str, np.ndarray] | None:
        """Add one utterance's arrays to the speaker's statistics, then return them z-normalised
        with the updated statistics, or None (strict) while the speaker has fewer than
        min_utterances utterances (this one counted).

        Each array is one vector of all its values (a [L, H] array gives L*H statistics), except
        names in ``rows``, [N, D] arrays whose rows each count (frames: statistics over every frame).
        Normalised arrays keep their shapes (float32). Update and normalisation are one atomic step.
        """
        if not isinstance(speaker, str) or not speaker:
            raise ValueError(f"speaker must be a non-empty string, got {speaker!r}")
        flat = {}
        for name, x in arrays.items():
            a = np.asarray(x, dtype=np.float64)
            a = a.reshape(a.shape[0], -1) if name in rows else a.reshape(-1)
            if a.size == 0 or not np.isfinite(a).all():
                raise ValueError(f"speaker {speaker!r} feature {name!r}: empty, NaN or infinite values")
            flat[name] = a
        need = self.speaker_bytes(arrays, rows)
        if need > self.max_bytes:
            raise ValueError(f"statistics of one speaker need {need} bytes, more than max_bytes={self.max_bytes}")
        with self._lock:
            feats = self._data.get(speaker) or {}
            for name, a in flat.items():
                run = feats.get(name)
                if run is not None and run.mean.shape[0] != a.shape[-1]:
                    raise ValueError(f"speaker {speaker!r} feature {name!r}: dimension {a.shape[-1]}, "
                                     f"earlier {run.mean.shape[0]}")
            for name, a in flat.items():
                run = feats.get(name)
                if run is None:
                    run = feats[name] = _Running(a.shape[-1])
                    self._bytes += run.nbytes
                if name in rows:
                    run.merge(a)
                else:
                    run.update(a)
            n = self._utterances.get(speaker, 0) + 1
            self._data[speaker] = feats
            self._data.move_to_end(speaker)
            self._utterances[speaker] = n
            self._evict()  # never this speaker: it is the most recent and fits in max_bytes
            if n < self.min_utterances:
                return None
            return {name: ((a - feats[name].mean) / (feats[name].std + EPS)).reshape(np.shape(arrays[name]))
                    .astype(np.float32) for name, a in flat.items()}

    def utterances(self, speaker: str) -> int:
        """Utterances seen through ``observe`` for the speaker (0 when unknown or evicted)."""
        with self._lock:
            return self._utterances.get(speaker, 0)

    def count(self, speaker: str, name: str = "default") -> int:
        """Utterances seen for the speaker (0 when unknown or evicted)."""
        with self._lock:
            run = self._data.get(speaker, {}).get(name)
            return run.n if run else 0

    def ready(self, speaker: str | None, name: str = "default") -> bool:
        """True when the speaker has at least min_utterances (normalisation will apply)."""
        return bool(speaker) and self.count(speaker, name) >= self.min_utterances

    def normalize(self, speaker: str | None, x, name: str = "default") -> np.ndarray:
        """z-normalised vector once the speaker has min_utterances; else ``x`` unchanged (strict)."""
        if not speaker:
            return np.asarray(x, dtype=np.float32)
        a = self._check(speaker, x)
        with self._lock:
            feats = self._data.get(speaker)
            run = feats.get(name) if feats else None
            if run is None or run.n < self.min_utterances:
                return a.astype(np.float32)
            if run.mean.shape != a.shape:
                raise ValueError(f"speaker {speaker!r} feature {name!r}: dimension {a.size}, stats {run.mean.size}")
            self._data.move_to_end(speaker)
            return ((a - run.mean) / (run.std + EPS)).astype(np.float32)

    def forget(self, speaker: str) -> bool:
        """Drop one speaker's statistics (e.g. on a deletion request); True when it was held."""
        with self._lock:
            feats = self._data.pop(speaker, None)
            self._utterances.pop(speaker, None)
            if feats is None:
                return False
            self._bytes -= sum(r.nbytes for r in feats.values())
            return True

    @property
    def nbytes(self) -> int:
        """Bytes of statistics currently held (always <= max_bytes)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, speaker: str) -> bool:
        return speaker in self._data

    def speakers(self) -> list[str]:
        """Held speakers, least recently used first."""
        with self._lock:
            return list(self._data)
