"""Evaluation folds: leave-one-group-out, speaker groups, official splits.

Rules every scheme follows:

- the test part of a fold is a set of whole groups (sessions, speakers, or the official test split);
  no group is shared between train and test;
- the validation part (model selection, early stopping, A2's fusion weight) is carved from the
  TRAINING groups only, never from the test fold, in one of :data:`VAL_MODES`:

  - ``"one_group"``: one whole training group (a session for ``logo``: LOSO then trains on 3 of
    IEMOCAP's 5 sessions);
  - ``"fraction"``: a label-stratified ``val_share`` of the training groups' utterances (LOSO then
    trains on every non-test session, as Padi 2022 and Wang 2023 do);
  - ``"speaker"``: every utterance of one speaker of the training groups;
  - ``"share"``: about ``val_share`` of the training utterances taken as whole speakers (or
    dialogues/sessions, ``val_unit``), so validation is speaker-disjoint from training;
- every utterance lands in exactly one of train / val / test in each fold; nothing is dropped.

Errors name the offending item (utterance id, group, parameter).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from emoflow.corpora.record import Utterance

SCHEMES = ("logo", "speaker_groups", "official")
VAL_MODES = ("one_group", "fraction", "speaker", "share")
VAL_UNITS = ("auto", "speaker", "dialogue", "session")


def describe_validation(mode: str, share: float | None = None) -> str:
    """One sentence on a validation mode, for reports and model cards."""
    pct = f"{100 * float(share):g} %" if share is not None else "a share"
    text = {
        "one_group": "one whole training group per fold (with leave-one-session-out: a training session "
                     "is held out, so each fold trains on one group fewer)",
        "fraction": f"a label-stratified {pct} of the training groups' utterances (every non-test group "
                    "trains; validation shares speakers with training)",
        "speaker": "all utterances of one speaker of the training groups",
        "share": f"about {pct} of the training utterances as whole speakers (or dialogues): "
                 "speaker-disjoint from training",
    }.get(mode)
    if text is None:
        raise FoldError(f"val must be one of {VAL_MODES}, got {mode!r}")
    return (f"validation `{mode}`: {text}; model selection and early stopping (and A2's fusion weight) "
            "use it; never the test group; an official dev split, when there is one, is the validation part")

# official split names (case-insensitive) → role
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev",
    "test": "test", "testing": "test",
}


class FoldError(ValueError):
    """Bad input for fold construction (too few groups, missing fields, bad parameters)."""


@dataclass
class Fold:
    """One evaluation fold. Id lists keep the input order of the utterances.

    test_groups / train_groups hold the scheme's groups (session names for ``logo``, speaker ids for
    ``speaker_groups``, the split name for ``official``); val_groups holds the units the validation
    part was made of, and val_unit says what they are ("session", "speaker", "dialogue", "split").
    """

    name: str
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]
    test_groups: list[str]
    val_groups: list[str]
    train_groups: list[str] = field(default_factory=list)
    val_unit: str = ""
    scheme: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Fold":
        return cls(**data)


# ----------------------------------------------------------------------------- input checks


def _as_utterances(utterances: Iterable) -> list[Utterance]:
    out = []
    for u in utterances:
        out.append(Utterance.from_dict(u) if isinstance(u, dict) else u)
    if not out:
        raise FoldError("no utterances given")
    seen: set[str] = set()
    for u in out:
        if not u.id:
            raise FoldError(f"utterance with empty id: {u!r}")
        if u.id in seen:
            raise FoldError(f"duplicate utterance id {u.id!r}")
        seen.add(u.id)
        if u.speaker in (None, ""):
            raise FoldError(f"utterance {u.id!r} has no speaker")
        if u.session in (None, ""):
            raise FoldError(f"utterance {u.id!r} has no session (evaluation group)")
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "g"


def _check_val(val: str, val_share: float, val_unit: str) -> None:
    if val not in VAL_MODES:
        raise FoldError(f"val must be one of {VAL_MODES}, got {val!r}")
    if not 0.0 < float(val_share) < 1.0:
        raise FoldError(f"val_share must be in (0, 1), got {val_share!r}")
    if val_unit not in VAL_UNITS:
        raise FoldError(f"val_unit must be one of {VAL_UNITS}, got {val_unit!r}")


# ----------------------------------------------------------------------------- group assignment


def speaker_groups(utterances: Sequence[Utterance], n_folds: int, seed: int = 0) -> dict[str, int]:
    """Split speakers into ``n_folds`` groups, deterministic by ``seed``: speaker → group index.

    Speakers are shuffled with the seed, then assigned greedily (largest first, to the group with
    the fewest utterances so far) so groups hold similar utterance counts; with equal counts per
    speaker this is a round-robin over the shuffled speakers.
    """
    counts: dict[str, int] = {}
    for u in utterances:
        counts[u.speaker] = counts.get(u.speaker, 0) + 1
    speakers = sorted(counts)
    if n_folds is None or int(n_folds) < 2:
        raise FoldError(f"scheme 'speaker_groups' needs n_folds >= 2, got {n_folds!r}")
    n_folds = int(n_folds)
    if n_folds > len(speakers):
        raise FoldError(
            f"scheme 'speaker_groups': n_folds={n_folds} but only {len(speakers)} speakers "
            f"({', '.join(speakers[:10])}{'...' if len(speakers) > 10 else ''})")
    order = np.random.default_rng(seed).permutation(len(speakers))
    shuffled = [speakers[i] for i in order]
    # stable sort keeps the shuffled order among equal counts
    shuffled.sort(key=lambda s: -counts[s])
    load = [0] * n_folds
    members = [0] * n_folds
    out: dict[str, int] = {}
    for spk in shuffled:
        g = min(range(n_folds), key=lambda k: (load[k], members[k], k))
        out[spk] = g
        load[g] += counts[spk]
        members[g] += 1
    return out


def _group_of(utts: Sequence[Utterance], scheme: str, n_folds, seed: int):
    """Returns (utterance id → group key, ordered group keys, group key → display names)."""
    if scheme == "logo":
        groups = sorted({u.session for u in utts})
        if n_folds is not None and int(n_folds) != len(groups):
            raise FoldError(
                f"scheme 'logo' makes one fold per session ({len(groups)} sessions: "
                f"{', '.join(groups[:10])}); n_folds={n_folds} does not match — leave n_folds "
                f"unset or use scheme='speaker_groups'")
        of = {u.id: u.session for u in utts}
        return of, groups, {g: [g] for g in groups}
    if scheme == "speaker_groups":
        spk_group = speaker_groups(utts, n_folds, seed)
        keys = [f"g{k + 1}" for k in range(int(n_folds))]
        names = {k: sorted(s for s, g in spk_group.items() if keys[g] == k) for k in keys}
        of = {u.id: keys[spk_group[u.speaker]] for u in utts}
        return of, keys, names
    raise FoldError(f"unknown fold scheme {scheme!r}; expected one of {SCHEMES}")


# ----------------------------------------------------------------------------- validation carving


def _carve_share(utts: Sequence[Utterance], unit: str, share: float, rng: np.random.Generator,
                 where: str) -> tuple[set[str], list[str]]:
    """Pick whole units (speakers/dialogues/sessions) of ``utts`` so that val holds close to
    ``share`` of the utterances; at least one unit goes to val and at least one stays in train.
    Returns (val utterance ids, val unit names)."""
    def key(u: Utterance) -> str:
        if unit == "dialogue":
            if u.dialogue in (None, ""):
                raise FoldError(f"{where}: val_unit='dialogue' but utterance {u.id!r} has no dialogue")
            return u.dialogue
        return u.speaker if unit == "speaker" else u.session

    counts: dict[str, int] = {}
    for u in utts:
        k = key(u)
        counts[k] = counts.get(k, 0) + 1
    units = sorted(counts)
    if len(units) < 2:
        raise FoldError(
            f"{where}: cannot carve a {unit}-disjoint validation share from the training part: "
            f"it has {len(units)} {unit}(s) ({', '.join(units)}); need at least 2")
    target = share * len(utts)
    chosen: list[str] = []
    total = 0
    # walk the shuffled units; take one when it brings the val size closer to the target
    for i in rng.permutation(len(units)):
        if len(chosen) == len(units) - 1:
            break
        c = counts[units[i]]
        if not chosen or abs(total + c - target) < abs(total - target):
            chosen.append(units[i])
            total += c
    chosen_set = set(chosen)
    return {u.id for u in utts if key(u) in chosen_set}, sorted(chosen)


def _carve_fraction(utts: Sequence[Utterance], share: float, rng: np.random.Generator,
                    where: str) -> tuple[set[str], list[str]]:
    """A label-stratified ``share`` of the utterances: share × n (rounded half up) of each label's n
    utterances (at least one utterance in all, and at least one left for training).
    Returns (val utterance ids, [a description of the part])."""
    if len(utts) < 2:
        raise FoldError(f"{where}: cannot carve a validation fraction from {len(utts)} training utterance(s)")
    by_label: dict[str, list[Utterance]] = {}
    for u in utts:
        by_label.setdefault(str(u.label), []).append(u)
    chosen: list[str] = []
    for label in sorted(by_label):
        members = by_label[label]
        k = int(np.floor(share * len(members) + 0.5))  # half up (round() would round half to even)
        chosen += [members[i].id for i in sorted(rng.permutation(len(members))[:k])]
    if not chosen:  # tiny parts: one utterance of the largest label
        label = max(sorted(by_label), key=lambda lab: len(by_label[lab]))
        chosen = [by_label[label][int(rng.integers(len(by_label[label])))].id]
    if len(chosen) == len(utts):
        chosen = chosen[:-1]
    return set(chosen), [f"{len(chosen)} of {len(utts)} training utterances, stratified by label"]


def _carve_speaker(utts: Sequence[Utterance], rng: np.random.Generator, where: str) -> tuple[set[str], list[str]]:
    """Every utterance of one speaker of ``utts`` (drawn with ``rng``); at least one other speaker
    stays in training. Returns (val utterance ids, [that speaker])."""
    speakers = sorted({u.speaker for u in utts})
    if len(speakers) < 2:
        raise FoldError(f"{where}: val='speaker' needs at least 2 training speakers; found "
                        f"{len(speakers)} ({', '.join(speakers)})")
    speaker = speakers[int(rng.integers(len(speakers)))]
    return {u.id for u in utts if u.speaker == speaker}, [speaker]


def _carve(utts: Sequence[Utterance], val: str, unit: str, share: float, rng: np.random.Generator,
           where: str) -> tuple[set[str], list[str], str]:
    """The validation part of ``utts`` (training utterances only) for a non-group mode:
    (val ids, val unit names, what the names are)."""
    if val == "fraction":
        ids, names = _carve_fraction(utts, share, rng, where)
        return ids, names, "fraction"
    if val == "speaker":
        ids, names = _carve_speaker(utts, rng, where)
        return ids, names, "speaker"
    ids, names = _carve_share(utts, unit, share, rng, where)
    return ids, names, unit


def _auto_unit(val_unit: str, utts: Sequence[Utterance], scheme: str) -> str:
    if val_unit != "auto":
        return val_unit
    if scheme == "official" and all(u.dialogue not in (None, "") for u in utts):
        return "dialogue"
    return "speaker"


# ----------------------------------------------------------------------------- schemes


def _group_folds(utts, scheme, n_folds, seed, val, val_share, val_unit, rotation: int = 0) -> list[Fold]:
    of, keys, names = _group_of(utts, scheme, n_folds, seed)
    n = len(keys)
    if n < 2:
        raise FoldError(
            f"scheme {scheme!r} needs at least 2 groups (one to test, one to train); found {n}: "
            f"{', '.join(keys)}")
    if val == "one_group" and n < 3:
        raise FoldError(
            f"scheme {scheme!r} with val='one_group' needs at least 3 groups (test, validation, "
            f"train); found {n}: {', '.join(keys)} — use val='fraction', 'speaker' or 'share', or more groups")
    unit = _auto_unit(val_unit, utts, scheme)
    group_unit = "session" if scheme == "logo" else "speaker"
    folds = []
    for i, test_key in enumerate(keys):
        train_keys = [k for k in keys if k != test_key]
        test_ids = [u.id for u in utts if of[u.id] == test_key]
        train_pool = [u for u in utts if of[u.id] != test_key]
        if val == "one_group":
            # the validation group cycles with the test group; the seed shifts the offset
            offset = 1 + ((int(seed) + int(rotation)) % (n - 1))
            val_key = keys[(i + offset) % n]
            val_set = {u.id for u in train_pool if of[u.id] == val_key}
            val_groups, used_unit = list(names[val_key]), group_unit
            train_keys = [k for k in train_keys if k != val_key]
        else:
            rng = np.random.default_rng([int(seed), i] + ([int(rotation)] if rotation else []))
            where = f"fold {i + 1} (test {', '.join(names[test_key])})"
            val_set, val_groups, used_unit = _carve(train_pool, val, unit, val_share, rng, where)
        if scheme == "logo":
            name = f"fold{i + 1}-{_safe(test_key)}"
        else:
            name = f"fold{i + 1}"
        folds.append(Fold(
            name=name,
            train_ids=[u.id for u in train_pool if u.id not in val_set],
            val_ids=[u.id for u in train_pool if u.id in val_set],
            test_ids=test_ids,
            test_groups=list(names[test_key]),
            val_groups=val_groups,
            train_groups=sorted(g for k in train_keys for g in names[k]),
            val_unit=used_unit,
            scheme=scheme,
        ))
    return folds


def _split_roles(utts: Sequence[Utterance]) -> dict[str, list[Utterance]]:
    roles: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    for u in utts:
        if u.split in (None, ""):
            raise FoldError(f"scheme 'official': utterance {u.id!r} has no split")
        role = _SPLIT_ALIASES.get(str(u.split).lower())
        if role is None:
            raise FoldError(
                f"scheme 'official': utterance {u.id!r} has unknown split {u.split!r} "
                f"(expected train/dev/test)")
        roles[role].append(u)
    if not roles["train"]:
        raise FoldError("scheme 'official': no utterance in the train split")
    return roles


def _carve_from_train(train: list[Utterance], val, val_share, val_unit, seed, where, rotation: int = 0):
    """Validation carved from the official train split (no dev split available): ``"fraction"``
    and ``"speaker"`` as everywhere; otherwise (an official split has no groups to hold out whole)
    a share of whole dialogues or speakers (``val_unit``)."""
    rng = np.random.default_rng([int(seed), 0] + ([int(rotation)] if rotation else []))
    unit = _auto_unit(val_unit, train, "official")
    return _carve(train, val if val in ("fraction", "speaker") else "share", unit, val_share, rng, where)


def _official_fold(utts, n_folds, seed, val, val_share, val_unit, rotation: int = 0) -> list[Fold]:
    if n_folds not in (None, 1):
        raise FoldError(f"scheme 'official' makes exactly one fold; n_folds={n_folds!r}")
    roles = _split_roles(utts)
    train, dev, test = roles["train"], roles["dev"], roles["test"]
    if not dev and not test:
        raise FoldError("scheme 'official': no dev or test split to evaluate on")
    if test and dev:
        val_ids, val_groups, unit = [u.id for u in dev], ["dev"], "split"
        train_ids, test_ids, test_groups = [u.id for u in train], [u.id for u in test], ["test"]
    else:
        held = test or dev
        test_groups = ["test" if test else "dev"]
        ids, val_groups, unit = _carve_from_train(train, val, val_share, val_unit, seed,
                                                  "official split (validation from train)", rotation)
        val_ids = [u.id for u in train if u.id in ids]
        train_ids = [u.id for u in train if u.id not in ids]
        test_ids = [u.id for u in held]
    return [Fold(name="official", train_ids=train_ids, val_ids=val_ids, test_ids=test_ids,
                 test_groups=test_groups, val_groups=val_groups, train_groups=["train"],
                 val_unit=unit, scheme="official")]


# ----------------------------------------------------------------------------- public API


def make_folds(
    utterances: Iterable[Utterance],
    scheme: str = "logo",
    n_folds: int | None = None,
    seed: int = 0,
    val: str = "one_group",
    val_share: float = 0.15,
    val_unit: str = "auto",
    val_rotation: int = 0,
) -> list[Fold]:
    """Build evaluation folds.

    scheme:
      - ``"logo"``: leave-one-group-out over ``utterance.session`` (IEMOCAP: 5 folds);
      - ``"speaker_groups"``: speakers split into ``n_folds`` groups (deterministic by ``seed``),
        one fold per group; a speaker is never in both train and test;
      - ``"official"``: ``utterance.split`` train→train, dev→val, test→test (the dev split is the
        validation part whatever ``val`` says); without a dev split validation is carved from
        train (``"fraction"``, ``"speaker"``, else a ``val_share`` of whole dialogues or speakers:
        an official split has no groups to hold out whole); without a test split dev is the test.
    val (always from the training groups, never the test group):
      - ``"one_group"``: one whole training group is the validation part (cycling with the test
        group, shifted by ``seed``);
      - ``"fraction"``: a label-stratified ``val_share`` of the training groups' utterances
        (every training group keeps training data; validation shares speakers with training);
      - ``"speaker"``: all utterances of one speaker of the training groups (drawn by seed, fold
        and rotation);
      - ``"share"``: about ``val_share`` of the training utterances, taken as whole speakers
        (or dialogues/sessions, ``val_unit``) so validation is speaker-disjoint from training.
    val_unit: "auto" (speaker; dialogue for official splits when every utterance has one),
      "speaker", "dialogue" or "session".
    val_rotation: another validation part from the same training groups, test parts unchanged
      (``one_group``: the next training group; ``share``: another draw). Seed-ensemble members
      k = 1, 2, ... use rotation k, so each is selected on different held-out training speakers.
    """
    if scheme not in SCHEMES:
        raise FoldError(f"unknown fold scheme {scheme!r}; expected one of {SCHEMES}")
    _check_val(val, val_share, val_unit)
    utts = _as_utterances(utterances)
    if scheme == "official":
        return _official_fold(utts, n_folds, seed, val, val_share, val_unit, val_rotation)
    return _group_folds(utts, scheme, n_folds, seed, val, val_share, val_unit, val_rotation)


def final_fit_split(
    utterances: Iterable[Utterance],
    scheme: str = "logo",
    n_folds: int | None = None,
    seed: int = 0,
    val: str = "share",
    val_share: float = 0.15,
    val_unit: str = "auto",
) -> Fold:
    """Train/val split for the final model, fitted on all groups (no test part).

    ``val="none"`` puts every utterance in training (the final fit then runs the epoch count
    selected in cross-validation); ``"one_group"`` holds out one group; ``"share"`` a
    speaker/dialogue-disjoint share. For ``scheme="official"`` the test split is never used:
    train → train and dev → val (with ``val="none"``, train + dev → train).
    """
    if scheme not in SCHEMES:
        raise FoldError(f"unknown fold scheme {scheme!r}; expected one of {SCHEMES}")
    if val != "none":
        _check_val(val, val_share, val_unit)
    utts = _as_utterances(utterances)
    if scheme == "official":
        roles = _split_roles(utts)
        train, dev = roles["train"], roles["dev"]
        if val == "none":
            pool = {u.id for u in train + dev}
            return Fold("final", [u.id for u in utts if u.id in pool], [], [], [], [],
                        ["train", "dev"] if dev else ["train"], "", scheme)
        if dev:
            return Fold("final", [u.id for u in train], [u.id for u in dev], [], [], ["dev"],
                        ["train"], "split", scheme)
        ids, names, unit = _carve_from_train(train, val, val_share, val_unit, seed,
                                             "final fit (official train split)")
        return Fold("final", [u.id for u in train if u.id not in ids],
                    [u.id for u in train if u.id in ids], [], [], names, ["train"], unit, scheme)

    if val == "none":
        attr = "session" if scheme == "logo" else "speaker"
        groups = sorted({getattr(u, attr) for u in utts})
        return Fold("final", [u.id for u in utts], [], [], [], [], groups, "", scheme)
    of, keys, names = _group_of(utts, scheme, n_folds, seed)
    all_groups = sorted(g for k in keys for g in names[k])
    if val == "one_group":
        if len(keys) < 2:
            raise FoldError(
                f"final fit with val='one_group' needs at least 2 groups; found {len(keys)}: "
                f"{', '.join(keys)}")
        val_key = keys[int(seed) % len(keys)]
        val_ids = {u.id for u in utts if of[u.id] == val_key}
        unit, val_groups = ("session" if scheme == "logo" else "speaker"), list(names[val_key])
        train_groups = sorted(g for k in keys if k != val_key for g in names[k])
    else:
        val_ids, val_groups, unit = _carve(utts, val, _auto_unit(val_unit, utts, scheme), val_share,
                                           np.random.default_rng([int(seed), 10**6]), "final fit")
        train_groups = all_groups
    return Fold("final", [u.id for u in utts if u.id not in val_ids],
                [u.id for u in utts if u.id in val_ids], [], [], val_groups, train_groups, unit, scheme)
