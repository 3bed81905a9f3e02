"""The validation choice of every fold scheme (issue 16, defect 1): one_group, fraction, speaker,
share; the validation part always comes from the training groups, never from the test group."""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoflow.corpora import Utterance
from emoflow.evaluation.folds import FoldError, VAL_MODES, make_folds

LABELS = ("ang", "hap", "neu", "sad")


def iemocap_like(per_speaker=20):
    """5 sessions × 2 speakers (Ses0NF / Ses0NM), labels cycling over 4 classes."""
    out = []
    for s in range(1, 6):
        for sex in "FM":
            for k in range(per_speaker):
                i = len(out)
                out.append(Utterance(id=f"Ses0{s}{sex}_{k:03d}", audio=None, text="t", label=LABELS[i % 4],
                                     speaker=f"Ses0{s}{sex}", session=f"Ses0{s}", corpus="iemocap"))
    return out


def sessions_of(ids, utts):
    by = {u.id: u for u in utts}
    return {by[i].session for i in ids}


def test_fraction_loso_trains_on_every_non_test_session():
    utts = iemocap_like()
    folds = make_folds(utts, scheme="logo", val="fraction", val_share=0.1)
    assert len(folds) == 5
    by = {u.id: u for u in utts}
    for f in folds:
        (test_session,) = f.test_groups
        others = {f"Ses0{s}" for s in range(1, 6)} - {test_session}
        assert sessions_of(f.train_ids, utts) == others  # 4 sessions, not 3
        assert sorted(f.train_groups) == sorted(others)
        assert not set(f.val_ids) & set(f.test_ids)
        assert sessions_of(f.val_ids, utts) <= others
        # stratified: 10 % of each label's training utterances (4 sessions × 2 × 20 / 4 labels = 40 each)
        assert Counter(by[i].label for i in f.val_ids) == {lab: 4 for lab in LABELS}
        assert f.val_unit == "fraction"
        assert len(f.train_ids) + len(f.val_ids) == 160


def test_speaker_validation_holds_exactly_one_training_speaker():
    utts = iemocap_like()
    by = {u.id: u for u in utts}
    for seed in range(3):
        for f in make_folds(utts, scheme="logo", val="speaker", seed=seed):
            speakers = {by[i].speaker for i in f.val_ids}
            assert len(speakers) == 1 and f.val_groups == sorted(speakers) and f.val_unit == "speaker"
            (speaker,) = speakers
            assert by[f.val_ids[0]].session != f.test_groups[0]
            assert {i for i in by if by[i].speaker == speaker} == set(f.val_ids)  # all of that speaker
            assert speaker not in {by[i].speaker for i in f.train_ids}
            # the other speaker of the validation speaker's session still trains: 4 sessions in training
            assert len(sessions_of(f.train_ids, utts)) == 4


def test_speaker_validation_rotates_with_ensemble_members():
    utts = iemocap_like()
    base = make_folds(utts, scheme="logo", val="speaker")
    rotated = [make_folds(utts, scheme="logo", val="speaker", val_rotation=k) for k in (1, 2, 3)]
    for i, f in enumerate(base):
        assert all(r[i].test_ids == f.test_ids for r in rotated)
    assert any(r[i].val_groups != f.val_groups for r in rotated for i, f in enumerate(base))


def test_speaker_groups_and_official_take_every_mode():
    utts = iemocap_like(8)
    for val in VAL_MODES:
        for f in make_folds(utts, scheme="speaker_groups", n_folds=5, val=val, val_share=0.2):
            assert f.val_ids and not set(f.val_ids) & set(f.test_ids)
    official = [Utterance(id=f"m{i}", audio=None, text="t", label=LABELS[i % 4], speaker=f"p{i % 6}",
                          session=f"d{i // 5}", dialogue=f"d{i // 5}", corpus="meld",
                          split="test" if i >= 80 else "train") for i in range(100)]
    (f,) = make_folds(official, scheme="official", val="fraction", val_share=0.1)
    assert len(f.val_ids) == 8 and f.val_unit == "fraction" and not set(f.val_ids) & set(f.test_ids)
    (g,) = make_folds(official, scheme="official", val="speaker")
    assert g.val_unit == "speaker" and len(g.val_groups) == 1


def test_bad_validation_mode_is_named():
    with pytest.raises(FoldError, match="'holdout'"):
        make_folds(iemocap_like(2), val="holdout")
    one_speaker_train = [Utterance(id=f"x{i}", audio=None, text="t", label="neu", speaker=f"s{i % 2}",
                                   session=f"S{i % 2}", corpus="c") for i in range(6)]
    with pytest.raises(FoldError, match="at least 2 training speakers"):
        make_folds(one_speaker_train, val="speaker")


@st.composite
def labelled_groupings(draw):
    layout = []
    for s in range(draw(st.integers(2, 6))):
        for p in range(draw(st.integers(2, 3))):
            for _ in range(draw(st.integers(1, 4))):
                layout.append((f"S{s}", f"S{s}p{p}", draw(st.sampled_from(LABELS))))
    return [Utterance(id=f"u{i}", audio=None, text="t", label=lab, speaker=spk, session=ses, corpus="c")
            for i, (ses, spk, lab) in enumerate(layout)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_groupings(), st.sampled_from(("fraction", "speaker")), st.integers(0, 3), st.integers(0, 2))
def test_test_ids_never_in_validation(utts, val, seed, rotation):
    for f in make_folds(utts, scheme="logo", val=val, val_share=0.1, seed=seed, val_rotation=rotation):
        assert not set(f.val_ids) & set(f.test_ids)
        assert sorted(f.train_ids + f.val_ids + f.test_ids) == sorted(u.id for u in utts)
        assert f.val_ids and f.train_ids


def test_final_fit_split_takes_the_new_modes():
    from emoflow.evaluation.folds import final_fit_split

    utts = iemocap_like(4)
    f = final_fit_split(utts, val="fraction", val_share=0.25)
    assert len(f.val_ids) == 4 * 3 and f.val_unit == "fraction"  # 2.5 of 10 per label, half up and len(f.train_groups) == 5
    g = final_fit_split(utts, val="speaker")
    assert g.val_unit == "speaker" and len({i.split("_")[0] for i in g.val_ids}) == 1
