"""Datasets, length bucketing and padding for every architecture.

Items are loaded once into memory (log-mel from the feature store, waveforms decoded from
the artifact store) and batched to the contract in ``emoflow.models``: padded tensors plus
boolean masks (True = real frame/sample).

Tasks (``TASKS``): ``single_label`` (one emotion per utterance, ``labels`` [B] long) or
``multilabel`` (the emotions present, ``extra["emotion_presence"]``, as multi-hot ``targets``
[B, C] float beside ``labels``). Which one a run trains is said by its utterances: a corpus
protocol with multi-label truth (CMU-MOSEI ``makhmudov2024``) marks each one
``extra["task"] = "multilabel"`` (see `training_task`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from emoflow.corpora import Utterance


SINGLE_LABEL, MULTILABEL = "single_label", "multilabel"
TASKS = (SINGLE_LABEL, MULTILABEL)
PRESENCE_THRESHOLD = 0.5  # an emotion is predicted present when its probability exceeds this


def training_task(utterances: Sequence[Utterance]) -> str:
    """The task the utterances' corpus protocol asks for (``extra["task"]``, default single_label);
    every utterance must say the same (an error names the first one that differs)."""
    if not utterances:
        return SINGLE_LABEL
    first = utterances[0].extra.get("task", SINGLE_LABEL)
    for utt in utterances:
        task = utt.extra.get("task", SINGLE_LABEL)
        if task not in TASKS:
            raise ValueError(f"utterance {utt.id!r}: task {task!r} is not one of {list(TASKS)}")
        if task != first:
            raise ValueError(f"utterance {utt.id!r} is {task}, utterance {utterances[0].id!r} is {first}: "
                             "one run trains one task (mixed corpus protocols?)")
    return first


def presence_target(utt: Utterance, labels: Sequence[str]) -> np.ndarray:
    """Multi-hot [C] float32 of ``extra["emotion_presence"]`` over ``labels``; an utterance without
    it, or with an emotion not in ``labels``, is an error naming it."""
    present = utt.extra.get("emotion_presence")
    if not isinstance(present, list) or not present:
        raise ValueError(f"utterance {utt.id!r} has no multi-label truth (extra.emotion_presence: {present!r})")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(present) - set(index))
    if unknown:
        raise ValueError(f"utterance {utt.id!r}: emotions {unknown} in emotion_presence are not in {list(labels)}")
    target = np.zeros(len(labels), dtype=np.float32)
    target[[index[e] for e in present]] = 1.0
    return target


def presence_sets(probs: np.ndarray, labels: Sequence[str], threshold: float = PRESENCE_THRESHOLD) -> list[list[str]]:
    """The emotions predicted present per row of per-emotion probabilities [N, C] (prob > threshold)."""
    return [[labels[j] for j in np.flatnonzero(row > threshold)] for row in np.asarray(probs)]


@dataclass
class Item:
    id: str
    label: int
    text: str
    dialogue: str
    target: np.ndarray | None = None  # multi-hot [C] (multilabel task)
    logmel: np.ndarray | None = None
    wave: np.ndarray | None = None
    emb: dict | None = None  # cached encoder embeddings: {"vec": [D], "layers": [L, 2H], "frames": [T, H]}

    @property
    def length(self) -> int:
        if self.logmel is not None:
            return int(self.logmel.shape[0])
        if self.wave is not None:
            return int(self.wave.shape[0] // 160)
        if self.emb is not None and "frames" in self.emb:
            return int(self.emb["frames"].shape[0])
        return len(self.text)


class UtteranceDataset(Dataset):
    """In-memory items for one list of utterances."""

    def __init__(self, items: Sequence[Item]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def subset(self, ids: Sequence[str]) -> "UtteranceDataset":
        by_id = {it.id: it for it in self.items}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"utterances not in dataset: {missing[:5]}")
        return UtteranceDataset([by_id[i] for i in ids])


def load_items(
    utterances: Sequence[Utterance],
    store,
    labels: Sequence[str],
    inputs: set[str],
    *,
    sample_rate: int = 16000,
    progress: bool = False,
    embeddings: Sequence[str] | None = None,
    task: str = SINGLE_LABEL,
) -> UtteranceDataset:
    """Load what the model needs for each utterance; unknown labels are an error naming the utterance.

    ``task`` multilabel: each item also gets its multi-hot ``target`` (`presence_target`).

    Input "speech_emb" loads cached encoder embeddings (``extra["embeddings"]``, written by the
    features step; see ``load_embedding_item``): ``embeddings`` lists the cache key hashes to use,
    in order; by default every cache the utterance records, in the recorded order.
    """
    from tqdm import tqdm

    if "speech_emb" in inputs:
        from emoflow.evaluation.normalization import SpeakerNormalizer

        normalizer = SpeakerNormalizer.from_utterances(utterances, store)

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} ({', '.join(TASKS)})")
    index = {name: i for i, name in enumerate(labels)}
    items = []
    for utt in tqdm(utterances, desc="load", disable=not progress, leave=False):
        if utt.label not in index:
            raise ValueError(f"utterance {utt.id!r}: label {utt.label!r} not in {list(labels)}")
        item = Item(id=utt.id, label=index[utt.label], text=utt.text or "", dialogue=utt.dialogue or utt.id,
                    target=presence_target(utt, labels) if task == MULTILABEL else None)
        if "logmel" in inputs:
            from emoflow.audio.features import load_logmel

            key = utt.extra.get("logmel")
            if not key:
                raise ValueError(f"utterance {utt.id!r} has no log-mel features; run the features step first")
            item.logmel = np.asarray(load_logmel(store, key), dtype=np.float32)
        if "wave" in inputs:
            item.wave = load_wave(utt, sample_rate)
        if "speech_emb" in inputs:
            item.emb = load_embedding_item(utt, store, embeddings, normalizer)
        items.append(item)
    return UtteranceDataset(items)


def load_embedding_item(utt: Utterance, store, hashes: Sequence[str] | None = None, normalizer=None) -> dict:
    """Cached embeddings of one utterance as model inputs (see ``assemble_embeddings``).

    ``hashes``: the caches to use, in order (default: every cache the utterance records, in the
    recorded order). With a normalizer (speaker-normalised protocol,
    ``emoflow.evaluation.normalization``) every array is z-normalised with the utterance's
    speaker statistics.
    """
    from emoflow.audio.embeddings import load_embedding

    recorded = utt.extra.get("embeddings") or {}
    chosen = list(hashes) if hashes else list(recorded)
    if not chosen:
        raise ValueError(f"utterance {utt.id!r} has no cached embeddings; run the features step with encoders")
    for h in chosen:
        if h not in recorded:
            raise ValueError(f"utterance {utt.id!r} has no cached embedding {h!r} (has {sorted(recorded)})")
    normalize = (lambda h, d: normalizer.apply(utt, h, d)) if normalizer is not None else None
    return assemble_embeddings([(h, load_embedding(store, recorded[h])) for h in chosen], normalize,
                               where=f"utterance {utt.id!r}")


def assemble_embeddings(parts: Sequence[tuple[str, dict]], normalize: Callable[[str, dict], dict] | None = None,
                        where: str = "embeddings") -> dict:
    """Model inputs of one utterance from its encoder embeddings, given as (cache hash, arrays) in order.

    An encoder with layer statistics gives "layers" [L, 2H] (mean and std of every hidden layer;
    one such encoder at most); the others add their utterance vector (mean, std when present, the
    backend's own pooled vector when present) to "vec"; frames give "frames" [T, H] (first encoder
    with frames). ``normalize(cache_hash, arrays)`` transforms each encoder's arrays first.
    """
    out: dict = {}
    vecs = []
    for h, arrays in parts:
        d = normalize(h, dict(arrays)) if normalize is not None else dict(arrays)
        if "layers_mean" in d:
            if "layers" in out:
                raise ValueError(f"{where}: two cached encoders with layer statistics; keep one")
            out["layers"] = np.concatenate([d["layers_mean"], d["layers_std"]], axis=-1).astype(np.float32)
        else:
            vecs += [d[k] for k in ("pooled", "std", "backend_pooled") if k in d]
        if "frames" in d and "frames" not in out:
            out["frames"] = d["frames"].astype(np.float32)
    if vecs:
        out["vec"] = np.concatenate(vecs).astype(np.float32)
    return out


def load_wave(utt: Utterance, sample_rate: int = 16000) -> np.ndarray:
    from emoflow.audio.io import load_audio
    from emoflow.storage import read_uri

    if not utt.audio:
        raise ValueError(f"utterance {utt.id!r} has no audio")
    data = read_uri(utt.audio) if utt.audio.startswith("s3://") else utt.audio
    return load_audio(data, sr=sample_rate, start=utt.start, end=utt.end)


class _EpochSampler(Sampler[list[int]]):
    """Batch samplers whose order depends only on (seed, epoch): a resumed run sees the same batches."""

    def __init__(self, batch_size: int, shuffle: bool, seed: int):
        self.batch_size = max(1, int(batch_size))
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> random.Random:
        return random.Random(self.seed * 100003 + self.epoch)


class BucketBatchSampler(_EpochSampler):
    """Batches of similar length: sort within large random pools, then shuffle the batches.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0, pool: int = 50):
        super().__init__(batch_size, shuffle, seed)
        self.lengths = list(lengths)
        self.pool = pool

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        rng = self.rng()
        if self.shuffle:
            rng.shuffle(order)
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class DialogueBatchSampler(_EpochSampler):
    """Batches of whole dialogues, each in utterance (dataset) order, for dialogue-context models.

    Dialogues (in order of first appearance, or shuffled by (seed, epoch)) are packed into
    batches of at most ``batch_size`` utterances; a dialogue longer than that is one batch on its
    own, never split. Every index appears exactly once per epoch; a resumed run sees the same
    batches. ``len()`` is the number of batches of the current epoch.
    """

    def __init__(self, dialogues: Sequence[str], batch_size: int, *, shuffle: bool, seed: int = 0):
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(dialogues):
            groups.setdefault(d, []).append(i)
        super().__init__(batch_size, shuffle, seed)
        self.groups = list(groups.values())

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.groups)))
        if self.shuffle:
            self.rng().shuffle(order)
        batches, current = [], []
        for g in order:
            group = self.groups[g]
            if current and len(current) + len(group) > self.batch_size:
                batches.append(current)
                current = []
            current = current + group
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def make_batch_sampler(items: Sequence[Item], batch_size: int, *, batch_by: str = "utterance", shuffle: bool,
                       seed: int = 0) -> Sampler[list[int]]:
    """``batch_by`` "utterance": length buckets (`BucketBatchSampler`); "dialogue": whole
    dialogues in order (`DialogueBatchSampler`)."""
    if batch_by == "dialogue":
        return DialogueBatchSampler([it.dialogue for it in items], batch_size, shuffle=shuffle, seed=seed)
    if batch_by == "utterance":
        return BucketBatchSampler([it.length for it in items], batch_size, shuffle=shuffle, seed=seed)
    raise ValueError(f"unknown batch_by {batch_by!r} (utterance, dialogue)")


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(a.shape[0] for a in arrays)
    shape = (len(arrays), longest) + arrays[0].shape[1:]
    out = torch.zeros(shape, dtype=torch.float32)
    mask = torch.zeros((len(arrays), longest), dtype=torch.bool)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = torch.from_numpy(np.ascontiguousarray(a))
        mask[i, : a.shape[0]] = True
    return out, mask


def collate_embeddings(embs: list[dict]) -> dict:
    """Batch keys of cached embeddings: speech_vec [B,D], speech_layers [B,L,2H],
    speech_emb [B,T,H] + speech_emb_mask [B,T] bool (each when present)."""
    out = {}
    if "vec" in embs[0]:
        out["speech_vec"] = torch.from_numpy(np.stack([e["vec"] for e in embs]))
    if "layers" in embs[0]:
        out["speech_layers"] = torch.from_numpy(np.stack([e["layers"] for e in embs]))
    if "frames" in embs[0]:
        out["speech_emb"], out["speech_emb_mask"] = _pad([e["frames"] for e in embs])
    return out


def make_collate(
    tokenize: Callable[[list[str]], dict] | None,
    *,
    batch_logmel: Callable[[list[np.ndarray]], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Callable[[list[Item]], dict]:
    """Collate items into the model batch contract; `batch_logmel` replaces padding (e.g. the
    random T-frame chunks of training)."""

    def collate(items: list[Item]) -> dict:
        batch: dict = {
            "ids": [it.id for it in items],
            "labels": torch.tensor([it.label for it in items], dtype=torch.long),
        }
        if items[0].target is not None:
            batch["targets"] = torch.from_numpy(np.stack([it.target for it in items]))
        if items[0].logmel is not None:
            mels = [it.logmel for it in items]
            batch["logmel"], batch["logmel_mask"] = batch_logmel(mels) if batch_logmel else _pad(mels)
        if items[0].wave is not None:
            batch["wave"], batch["wave_mask"] = _pad([it.wave for it in items])
        if items[0].emb is not None:
            batch.update(collate_embeddings([it.emb for it in items]))
        if tokenize is not None:
            batch.update(tokenize([it.text for it in items]))
        dialogue_index: dict[str, int] = {}
        batch["dialogue"] = torch.tensor(
            [dialogue_index.setdefault(it.dialogue, len(dialogue_index)) for it in items], dtype=torch.long
        )
        return batch

    return collate
