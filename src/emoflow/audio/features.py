"""Feature step: per-utterance log-mel in the artifact store, keyed by the config hash.

Layout in the store::

    features/logmel/<cfg_hash>/config.json                  the LogMelConfig that made them
    features/logmel/<cfg_hash>/<corpus>/<id>-<src8>.npy      float32 [T, n_mels] per utterance

``<src8>`` hashes the utterance's audio content (the sha256 ingest records; the audio URI when
there is none) and start/end, so an utterance with the same id but other audio, even at the same
path (``copy_audio: false``), never reuses stale features; a changed config gives a new
``<cfg_hash>``. Existing keys are reused, not recomputed (unless ``recompute=True``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import os
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from emoflow import work
from emoflow.audio.io import AudioError, load_audio
from emoflow.audio.logmel import LogMelConfig, logmel_batch
from emoflow.config import config_hash
from emoflow.corpora.record import Utterance

PREFIX = "features/logmel"

# Number of utterances whose log-mel was actually computed in this process (tests/benchmarks).
COUNTS = {"computed": 0}


class FeatureError(RuntimeError):
    """Feature extraction failed for a named utterance."""


def _safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name or safe in ("", ".", ".."):
        safe = f"{safe}_{config_hash(name, 6)}"
    return safe


def source_key(utt: Utterance) -> str:
    """Short hash of an utterance's audio content (ingest's sha256, else its URI) and start/end."""
    return config_hash([utt.extra.get("sha256") or utt.audio, utt.start, utt.end], 8)


def feature_key(cfg_hash: str, utt: Utterance, suffix: str = "") -> str:
    """Store key of one utterance's features under a config hash."""
    return f"{PREFIX}/{cfg_hash}/{_safe(utt.corpus)}/{_safe(utt.id)}-{source_key(utt)}{suffix}.npy"


def _to_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def load_logmel(store, key: str) -> np.ndarray:
    """Read one utterance's stored log-mel [T, n_mels] (float32)."""
    store = _open(store)
    try:
        return np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
    except KeyError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise FeatureError(f"cannot read features {key!r}: {exc}") from exc


def _open(store):
    if isinstance(store, str):
        from emoflow.storage import open_store

        return open_store(store)
    return store


def _as_cfg(cfg) -> LogMelConfig:
    if cfg is None:
        return LogMelConfig()
    if isinstance(cfg, dict):
        return LogMelConfig.from_dict(cfg)
    if isinstance(cfg, LogMelConfig):
        return cfg
    raise TypeError(f"cfg must be a LogMelConfig or dict, got {type(cfg).__name__}")


def _decode(item, sr: int):
    audio, start, end = item
    try:
        return load_audio(audio, sr=sr, start=start, end=end)
    except AudioError as exc:
        return exc


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _decode_and_compute(items, batch: list[int], cfg: LogMelConfig, device, threads: int | None):
    if threads is not None:
        torch.set_num_threads(threads)  # this worker's intra-op threads
    waves = [_decode(items[i], cfg.sample_rate) for i in batch]
    good = [w for w in waves if not isinstance(w, Exception)]
    feats = iter(logmel_batch(good, cfg, device=device))
    return [(i, w if isinstance(w, Exception) else next(feats)) for i, w in zip(batch, waves)]


def iter_logmel(items, cfg: LogMelConfig | None = None, batch_size: int = 32, device=None,
                workers: int | None = None) -> Iterator[tuple[int, np.ndarray | AudioError]]:
    """The fast path: yield ``(index, log-mel [T, n_mels] or AudioError)`` for each item, in order.

    ``items`` are audio sources or ``(source, start, end)`` tuples. Each of ``workers`` threads
    (default: one per CPU core) decodes a batch with soundfile and computes it as one batched
    STFT with one intra-op thread; decoding and torch kernels release the GIL, so the cores
    stay busy without oversubscription. On a GPU, one worker feeds the device.
    """
    cfg = cfg or LogMelConfig()
    items = [it if isinstance(it, tuple) else (it, None, None) for it in items]
    batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    on_gpu = device is not None and torch.device(device).type != "cpu"
    workers = workers or (1 if on_gpu else max(1, min(_cpus(), 8)))
    threads = None if on_gpu else 1
    if workers == 1:
        for batch in batches:
            yield from _decode_and_compute(items, batch, cfg, device, None)
        return
    saved = torch.get_num_threads()  # set_num_threads is process-wide: restored at the end
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = deque()
            for batch in batches:
                pending.append(pool.submit(_decode_and_compute, items, batch, cfg, device, threads))
                if len(pending) > workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
    finally:
        torch.set_num_threads(saved)


def _compute(store, cfg: LogMelConfig, todo: list[tuple[int, Utterance, str]], batch_size: int,
             progress, failures: dict[int, str], device=None) -> None:
    """Compute and store the missing features; failures[index] = reason."""
    items = [(u.audio, u.start, u.end) for _, u, _ in todo]
    with tqdm(total=len(todo), desc=f"log-mel {cfg.hash()}", unit="utt", leave=False,
              disable=(not progress) if progress is not None else None) as bar:
        for j, result in iter_logmel(items, cfg, batch_size, device):
            idx, _, key = todo[j]
            if isinstance(result, Exception):
                failures[idx] = str(result)
            else:
                store.put_bytes(key, _to_npy(result))
                COUNTS["computed"] += 1
                work.add("logmel")
            bar.update(1)


def _ensure_config(store, cfg: LogMelConfig) -> None:
    key = f"{PREFIX}/{cfg.hash()}/config.json"
    if not store.exists(key):
        store.put_bytes(key, json.dumps(cfg.to_dict(), sort_keys=True, indent=1).encode())


def extract_features(utterances: list[Utterance], store, cfg: LogMelConfig | dict | None = None, *,
                     batch_size: int = 32, progress: bool | None = None, quarantine: list | None = None,
                     summary: dict | None = None, device=None, recompute: bool = False) -> list[Utterance]:
    """Compute (or reuse) each utterance's log-mel in ``store``; set ``extra["logmel"]`` = key.
    ``recompute=True`` computes every utterance again and replaces what is stored.

    Returns new Utterance records (inputs untouched). Utterances without audio (text-only
    corpora) pass through without a ``logmel`` key. An utterance whose audio fails to decode
    raises FeatureError naming it — or, when a ``quarantine`` list is given, is appended there
    as ``{"id", "corpus", "step": "features", "reason"}`` and left out of the result.
    ``summary`` (a dict, optional) receives counts: total, computed, reused, no_audio,
    quarantined, cfg_hash, prefix.
    """
    cfg = _as_cfg(cfg)
    store = _open(store)
    utts = list(utterances)
    ids = [u.id for u in utts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise FeatureError(f"duplicate utterance ids in features input: {dup}")
    # speaker normalisation = raw log-mel (cached as normalize="none") + per-speaker statistics
    base_cfg = dataclasses.replace(cfg, normalize="none") if cfg.normalize == "speaker" else cfg
    h = base_cfg.hash()
    _ensure_config(store, base_cfg)
    keys: dict[int, str] = {}
    todo = []
    reused = no_audio = 0
    for i, u in enumerate(utts):
        if not u.audio:
            no_audio += 1
            continue
        keys[i] = feature_key(h, u)
        if not recompute and store.exists(keys[i]):
            reused += 1
        else:
            todo.append((i, u, keys[i]))
    failures: dict[int, str] = {}
    before = COUNTS["computed"]
    _compute(store, base_cfg, todo, batch_size, progress, failures, device)
    computed = COUNTS["computed"] - before
    work.reused("logmel", reused)
    if cfg.normalize == "speaker":
        keys, extra_computed = _speaker_normalise(store, cfg, utts, keys, failures, recompute)
        computed += extra_computed
    if failures and quarantine is None:
        first = min(failures)
        raise FeatureError(f"features failed for {len(failures)} utterance(s); first "
                           f"{utts[first].id!r} ({utts[first].audio}): {failures[first]}")
    out = []
    for i, u in enumerate(utts):
        if i in failures:
            quarantine.append({"id": u.id, "corpus": u.corpus, "step": "features", "reason": failures[i]})
            continue
        if i in keys:
            u = dataclasses.replace(u, extra={**u.extra, "logmel": keys[i], "logmel_config": cfg.hash()})
        out.append(u)
    if summary is not None:
        summary.update(total=len(utts), computed=computed, reused=reused, no_audio=no_audio,
                       quarantined=len(failures), cfg_hash=cfg.hash(), prefix=f"{PREFIX}/{cfg.hash()}")
    return out


def _speaker_normalise(store, cfg: LogMelConfig, utts, raw_keys: dict[int, str], failures,
                       recompute: bool = False) -> tuple[dict[int, str], int]:
    """Normalise raw log-mel per (corpus, speaker) with statistics over that speaker's utterances.

    The stored key carries a hash of the speaker's utterance set, so a different set of
    utterances gives new statistics and new keys (never stale reuse).
    """
    h = cfg.hash()
    _ensure_config(store, cfg)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in raw_keys:
        if i not in failures:
            groups[(utts[i].corpus, utts[i].speaker)].append(i)
    keys: dict[int, str] = {}
    computed = 0
    for members in groups.values():
        set_hash = config_hash(sorted(raw_keys[i] for i in members), 8)
        want = {i: feature_key(h, utts[i], f"-spk{set_hash}") for i in members}
        if not recompute and all(store.exists(k) for k in want.values()):
            keys.update(want)
            continue
        raw = {i: load_logmel(store, raw_keys[i]) for i in members}
        frames = np.concatenate(list(raw.values()), axis=0)
        mean = frames.mean(axis=0, keepdims=True)
        std = np.maximum(frames.std(axis=0, keepdims=True), 1e-5)
        for i in members:
            store.put_bytes(want[i], _to_npy((raw[i] - mean) / std))
            computed += 1
        keys.update(want)
    return keys, computed
