"""Fold construction: group disjointness (property tests), validation from training groups only."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoflow.corpora import Utterance
from emoflow.evaluation.folds import Fold, FoldError, final_fit_split, make_folds, speaker_groups


def utt(i, session, speaker, split=None, dialogue=None):
    return Utterance(id=f"u{i}", audio=None, text="t", label="neu", speaker=speaker,
                     session=session, corpus="c", split=split, dialogue=dialogue)


def corpus_from(layout):
    """layout: list of (session, speaker) per utterance."""
    return [utt(i, s, p) for i, (s, p) in enumerate(layout)]


# random corpora: sessions holding their own speakers (as IEMOCAP) or speakers crossing sessions
@st.composite
def groupings(draw, min_sessions=2):
    n_sessions = draw(st.integers(min_sessions, 7))
    layout = []
    for s in range(n_sessions):
        n_spk = draw(st.integers(1, 3))
        for p in range(n_spk):
            shared = draw(st.booleans())
            spk = f"spk{p}" if shared else f"S{s}spk{p}"
            for _ in range(draw(st.integers(1, 4))):
                layout.append((f"Ses{s:02d}", spk))
    order = draw(st.permutations(range(len(layout))))
    return corpus_from([layout[i] for i in order])


def by_id(utts):
    return {u.id: u for u in utts}


def check_partition(fold, utts):
    ids = [u.id for u in utts]
    parts = fold.train_ids + fold.val_ids + fold.test_ids
    assert sorted(parts) == sorted(ids), "every utterance in exactly one part"
    assert fold.train_ids and fold.val_ids and fold.test_ids


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(groupings(min_sessions=3), st.integers(0, 5))
def test_logo_one_group_never_shares_a_group(utts, seed):
    idx = by_id(utts)
    sessions = {u.session for u in utts}
    folds = make_folds(utts, scheme="logo", seed=seed, val="one_group")
    assert len(folds) == len(sessions)
    tested = []
    for f in folds:
        check_partition(f, utts)
        train_s = {idx[i].session for i in f.train_ids}
        val_s = {idx[i].session for i in f.val_ids}
        test_s = {idx[i].session for i in f.test_ids}
        assert len(test_s) == 1 and test_s == set(f.test_groups)
        assert not (train_s & test_s) and not (val_s & test_s) and not (train_s & val_s)
        assert val_s == set(f.val_groups) and len(val_s) == 1
        assert train_s == set(f.train_groups)
        tested += f.test_ids
    # every utterance tested exactly once across folds
    assert sorted(tested) == sorted(idx)
    # the validation group cycles: each session is validation exactly once
    assert sorted(f.val_groups[0] for f in folds) == sorted(sessions)


@SETTINGS
@given(groupings(min_sessions=2), st.integers(0, 5), st.floats(0.05, 0.6))
def test_logo_share_val_from_training_groups_and_speaker_disjoint(utts, seed, share):
    idx = by_id(utts)
    try:
        folds = make_folds(utts, scheme="logo", seed=seed, val="share", val_share=share)
    except FoldError as exc:
        # only allowed when some training part has a single speaker
        assert "need at least 2" in str(exc)
        return
    tested = []
    for f in folds:
        check_partition(f, utts)
        test_s = set(f.test_groups)
        assert {idx[i].session for i in f.test_ids} == test_s
        # validation never draws from the test fold
        assert not ({idx[i].session for i in f.val_ids} & test_s)
        assert not ({idx[i].session for i in f.train_ids} & test_s)
        # validation is speaker-disjoint from training
        assert not ({idx[i].speaker for i in f.val_ids} & {idx[i].speaker for i in f.train_ids})
        assert {idx[i].speaker for i in f.val_ids} == set(f.val_groups)
        assert f.val_unit == "speaker"
        tested += f.test_ids
    assert sorted(tested) == sorted(idx)


@SETTINGS
@given(groupings(min_sessions=1), st.integers(2, 5), st.integers(0, 100),
       st.sampled_from(["one_group", "share"]))
def test_speaker_groups_never_share_a_speaker(utts, n_folds, seed, val):
    idx = by_id(utts)
    n_spk = len({u.speaker for u in utts})
    try:
        folds = make_folds(utts, scheme="speaker_groups", n_folds=n_folds, seed=seed, val=val)
    except FoldError as exc:
        assert n_folds > n_spk or (val == "one_group" and n_folds < 3) or "need at least 2" in str(exc)
        return
    assert n_folds <= n_spk
    assert len(folds) == n_folds
    tested = []
    for f in folds:
        check_partition(f, utts)
        tr = {idx[i].speaker for i in f.train_ids}
        va = {idx[i].speaker for i in f.val_ids}
        te = {idx[i].speaker for i in f.test_ids}
        assert te == set(f.test_groups)
        assert not (tr & te) and not (va & te) and not (tr & va)
        tested += f.test_ids
    assert sorted(tested) == sorted(idx)
    # deterministic by seed
    again = make_folds(utts, scheme="speaker_groups", n_folds=n_folds, seed=seed, val=val)
    assert [f.to_dict() for f in again] == [f.to_dict() for f in folds]


@SETTINGS
@given(groupings(min_sessions=3), st.integers(0, 5), st.sampled_from(["one_group", "share"]),
       st.integers(1, 4))
def test_val_rotation_keeps_test_parts_and_moves_validation(utts, seed, val, rotation):
    """Seed-ensemble members: same test parts, validation still from the training groups only."""
    idx = by_id(utts)
    try:
        base = make_folds(utts, scheme="logo", seed=seed, val=val)
    except FoldError:
        return
    rotated = make_folds(utts, scheme="logo", seed=seed, val=val, val_rotation=rotation)
    assert [f.name for f in rotated] == [f.name for f in base]
    for f, g in zip(base, rotated):
        check_partition(g, utts)
        assert g.test_ids == f.test_ids and g.test_groups == f.test_groups
        test_s = set(g.test_groups)
        assert not ({idx[i].session for i in g.val_ids} & test_s)
        assert not ({idx[i].session for i in g.train_ids} & test_s)
    sessions = sorted({u.session for u in utts})
    if val == "one_group" and rotation % (len(sessions) - 1):
        # another training group holds validation in every fold
        assert all(f.val_groups != g.val_groups for f, g in zip(base, rotated))


def test_iemocap_like_logo_has_five_named_folds():
    utts = corpus_from([(f"Ses0{s}", f"Ses0{s}{g}") for s in range(1, 6) for g in "FM" for _ in range(3)])
    folds = make_folds(utts)
    assert [f.name for f in folds] == [f"fold{i}-Ses0{i}" for i in range(1, 6)]
    assert [f.test_groups for f in folds] == [[f"Ses0{i}"] for i in range(1, 6)]
    # seed 0: the next session validates
    assert [f.val_groups for f in folds] == [["Ses02"], ["Ses03"], ["Ses04"], ["Ses05"], ["Ses01"]]
    assert folds[0].train_groups == ["Ses03", "Ses04", "Ses05"]
    assert len(folds[0].test_ids) == 6 and len(folds[0].val_ids) == 6 and len(folds[0].train_ids) == 18
    # share: a speaker of a training session validates
    share = make_folds(utts, val="share", val_share=0.15)
    assert all(len(f.val_groups) == 1 and f.val_groups[0][:5] != f.test_groups[0] for f in share)
    # round trip through a dict (KFP passes folds as JSON)
    assert Fold.from_dict(folds[2].to_dict()) == folds[2]


def test_speaker_groups_balanced_and_seed_dependent():
    utts = corpus_from([("s", f"A{a:02d}") for a in range(1, 19) for _ in range(4)])
    g0 = speaker_groups(utts, 6, seed=0)
    assert sorted(list(g0.values()).count(k) for k in range(6)) == [3] * 6
    assert g0 == speaker_groups(utts, 6, seed=0)
    assert g0 != speaker_groups(utts, 6, seed=1)
    folds = make_folds(utts, scheme="speaker_groups", n_folds=6, seed=0)
    assert [f.name for f in folds] == [f"fold{i}" for i in range(1, 7)]
    assert all(len(f.test_groups) == 3 and len(f.val_groups) == 3 for f in folds)


def test_too_few_groups_and_bad_input_give_clear_errors():
    two = corpus_from([("A", "a"), ("B", "b")])
    with pytest.raises(FoldError, match="at least 3 groups"):
        make_folds(two, val="one_group")
    with pytest.raises(FoldError, match="at least 2 groups"):
        make_folds(corpus_from([("A", "a"), ("A", "b")]), val="share")
    # one speaker per training part: no speaker-disjoint share possible
    with pytest.raises(FoldError, match=r"1 speaker\(s\)"):
        make_folds(two, val="share")
    with pytest.raises(FoldError, match="n_folds=3 but only 2 speakers"):
        make_folds(two, scheme="speaker_groups", n_folds=3)
    with pytest.raises(FoldError, match="n_folds >= 2"):
        make_folds(two, scheme="speaker_groups")
    with pytest.raises(FoldError, match="n_folds=4 does not match"):
        make_folds(corpus_from([("A", "a"), ("B", "b"), ("C", "c")]), n_folds=4)
    with pytest.raises(FoldError, match="duplicate utterance id 'u0'"):
        make_folds(two + [two[0]])
    with pytest.raises(FoldError, match="unknown fold scheme 'kfold'"):
        make_folds(two, scheme="kfold")
    with pytest.raises(FoldError, match="val_share"):
        make_folds(two, val="share", val_share=1.5)
    bad = utt(9, "", "x")
    with pytest.raises(FoldError, match="'u9' has no session"):
        make_folds(two + [bad], val="share")
    with pytest.raises(FoldError, match="no utterances"):
        make_folds([])


def official(layout):
    """layout: (split, speaker, dialogue)."""
    return [utt(i, "s", spk, split=sp, dialogue=d) for i, (sp, spk, d) in enumerate(layout)]


def test_official_train_dev_test():
    utts = official([("train", "a", "d1"), ("dev", "b", "d2"), ("test", "c", "d3"), ("TRAIN", "d", "d4")])
    (f,) = make_folds(utts, scheme="official")
    assert (f.train_ids, f.val_ids, f.test_ids) == (["u0", "u3"], ["u1"], ["u2"])
    assert f.val_unit == "split" and f.test_groups == ["test"] and f.val_groups == ["dev"]


def test_official_without_test_uses_dev_as_test_and_carves_val_by_dialogue():
    layout = [("train", f"spk{i % 3}", f"dia{i // 4}") for i in range(40)] + [("dev", "x", "dd")] * 5
    utts = official(layout)
    (f,) = make_folds(utts, scheme="official", val_share=0.2)
    idx = by_id(utts)
    assert f.test_ids == [f"u{i}" for i in range(40, 45)] and f.test_groups == ["dev"]
    assert f.val_unit == "dialogue"
    # whole dialogues, only from train, disjoint from training dialogues
    assert all(idx[i].split == "train" for i in f.val_ids)
    assert not ({idx[i].dialogue for i in f.val_ids} & {idx[i].dialogue for i in f.train_ids})
    assert len(f.val_ids) == 8  # 2 dialogues of 4 = 20 %
    check_partition(f, utts)
    # speaker-disjoint on request
    (g,) = make_folds(utts, scheme="official", val_unit="speaker")
    assert not ({idx[i].speaker for i in g.val_ids} & {idx[i].speaker for i in g.train_ids})


def test_official_errors_name_the_utterance():
    with pytest.raises(FoldError, match="'u1' has unknown split 'holdout'"):
        make_folds(official([("train", "a", "d"), ("holdout", "b", "d")]), scheme="official")
    with pytest.raises(FoldError, match="'u0' has no split"):
        make_folds(official([(None, "a", "d")]), scheme="official")
    with pytest.raises(FoldError, match="no dev or test"):
        make_folds(official([("train", "a", "d"), ("train", "b", "e")]), scheme="official")


def test_final_fit_split_uses_all_groups():
    utts = corpus_from([(f"Ses0{s}", f"Ses0{s}{g}") for s in range(1, 6) for g in "FM" for _ in range(3)])
    f = final_fit_split(utts, val="none")
    assert f.train_ids == [u.id for u in utts] and not f.val_ids and not f.test_ids
    f = final_fit_split(utts, val="one_group")
    assert f.val_groups == ["Ses01"] and len(f.val_ids) == 6 and len(f.train_ids) == 24
    f = final_fit_split(utts, val="share", val_share=0.1)
    idx = by_id(utts)
    assert len(f.val_groups) == 1 and not f.test_ids
    assert not ({idx[i].speaker for i in f.val_ids} & {idx[i].speaker for i in f.train_ids})
    assert sorted(f.train_ids + f.val_ids) == sorted(idx)
    # official: test split is never used by the final fit
    off = official([("train", "a", "d1"), ("dev", "b", "d2"), ("test", "c", "d3")])
    f = final_fit_split(off, scheme="official")
    assert (f.train_ids, f.val_ids) == (["u0"], ["u1"])
    assert final_fit_split(off, scheme="official", val="none").train_ids == ["u0", "u1"]


def test_final_fit_split_speaker_groups():
    utts = corpus_from([("s", f"A{a:02d}") for a in range(1, 7) for _ in range(2)])
    f = final_fit_split(utts, scheme="speaker_groups", val="none")
    assert len(f.train_ids) == 12 and f.train_groups == [f"A{a:02d}" for a in range(1, 7)]
    f = final_fit_split(utts, scheme="speaker_groups", n_folds=3, val="one_group")
    idx = by_id(utts)
    assert len(f.val_groups) == 2 and {idx[i].speaker for i in f.val_ids} == set(f.val_groups)
    assert not ({idx[i].speaker for i in f.val_ids} & {idx[i].speaker for i in f.train_ids})
