"""Synthetic demo corpus: audio format, bounds, determinism, grouping, prosody, manifest."""

import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emoflow.corpora import read_manifest
from emoflow.corpora.synthetic import (
    MAX_SECONDS,
    MIN_SECONDS,
    generate_demo_corpus,
    main,
    read_demo,
)

SMALL = dict(sessions=2, speakers_per_session=2, utterances_per_speaker=8, seed=3)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _f0(x: np.ndarray, sr: int = 16000) -> float:
    """Median autocorrelation pitch (Hz) over loud 40 ms frames."""
    win, hop = int(0.04 * sr), int(0.01 * sr)
    frames = [x[i:i + win] for i in range(0, len(x) - win, hop)]
    energy = np.array([np.sqrt(np.mean(f ** 2)) for f in frames])
    lo, hi = sr // 400, sr // 60
    f0s = []
    for f, e in zip(frames, energy):
        if e < 0.3 * energy.max():
            continue
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[win - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo_corpus(out, **SMALL)


def test_files_decode_16k_mono_within_duration_bounds(small):
    out, utts = small
    assert len(utts) == 2 * 2 * 8
    for u in utts:
        assert u.audio == f"wav/{u.id}.wav"
        info = sf.info(out / u.audio)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert MIN_SECONDS <= info.duration <= MAX_SECONDS, (u.id, info.duration)
        x, _ = sf.read(out / u.audio)
        assert np.sqrt(np.mean(x ** 2)) > 0.01, f"{u.id} is (nearly) silent"


def test_sessions_speakers_labels_as_requested(small):
    _, utts = small
    assert sorted({u.session for u in utts}) == ["S1", "S2"]
    by_session = defaultdict(set)
    for u in utts:
        by_session[u.session].add(u.speaker)
        assert u.speaker.startswith(u.session + "_")
        assert u.id.startswith(u.speaker + "_")
        assert (u.corpus, u.text_source) == ("demo", "reference")
        assert u.text and u.extra["synthetic"] is True
    assert all(len(s) == 2 for s in by_session.values())
    assert len({u.speaker for u in utts}) == 4
    per_speaker = defaultdict(Counter)
    for u in utts:
        per_speaker[u.speaker][u.label] += 1
    for counts in per_speaker.values():  # balanced: 8 utterances, 4 emotions
        assert counts == Counter({"neutral": 2, "happy": 2, "sad": 2, "angry": 2})


def test_manifest_round_trips_and_read_demo_resolves(small):
    out, utts = small
    assert read_manifest(out / "manifest.jsonl") == utts
    demo = read_demo(out)
    assert [u.id for u in demo] == [u.id for u in utts]
    for u in demo:
        assert Path(u.audio).is_absolute() and Path(u.audio).is_file()


def test_readme_says_synthetic(small):
    out, _ = small
    text = (out / "README.txt").read_text()
    assert "SYNTHETIC" in text and "smoke tests only" in text and "espeak-ng" in text
    assert '"seed": 3' in text and '"sessions": 2' in text


def test_deterministic_byte_identical(small, tmp_path):
    out, _ = small
    generate_demo_corpus(tmp_path / "again", **SMALL)
    assert _tree_digest(tmp_path / "again") == _tree_digest(out)
    other = generate_demo_corpus(tmp_path / "seed4", **{**SMALL, "seed": 4})
    assert _tree_digest(tmp_path / "seed4") != _tree_digest(out)
    assert [u.text for u in other] != [u.text for u in read_manifest(out / "manifest.jsonl")]


def test_regenerating_smaller_corpus_removes_stale_files(tmp_path):
    generate_demo_corpus(tmp_path, sessions=1, speakers_per_session=1, utterances_per_speaker=6)
    utts = generate_demo_corpus(tmp_path, sessions=1, speakers_per_session=1,
                                utterances_per_speaker=4)
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == sorted(
        f"{u.id}.wav" for u in utts)
    assert len(read_demo(tmp_path)) == 4


def test_prosody_differs_between_emotions(small):
    out, utts = small
    rms, f0 = defaultdict(list), defaultdict(list)
    for u in utts:
        x, _ = sf.read(out / u.audio)
        rms[u.label].append(np.sqrt(np.mean(x ** 2)))
        f0[u.label].append(_f0(x))
    mean = {k: float(np.mean(v)) for k, v in rms.items()}
    pitch = {k: float(np.mean(v)) for k, v in f0.items()}
    assert mean["angry"] > 1.8 * mean["sad"], mean
    assert mean["happy"] > 1.4 * mean["sad"], mean
    assert pitch["happy"] > 1.2 * pitch["sad"], pitch
    assert pitch["angry"] > 1.1 * pitch["sad"], pitch


def test_text_carries_part_of_the_signal(small):
    _, utts = small
    cues = Counter(u.extra["text_cue"].split(":")[0] for u in utts)
    assert cues["label"] > 0 and cues["ambiguous"] > 0
    assert cues["label"] < len(utts)  # text alone does not give the label away


@pytest.mark.parametrize("kwargs, needle", [
    (dict(emotions=("neutral", "fear")), "'fear'"),
    (dict(sessions=0), "sessions"),
    (dict(speakers_per_session=99), "speakers_per_session"),
    (dict(emotions=("sad", "sad")), "duplicate"),
    (dict(emotions="sad"), "string"),
])
def test_bad_arguments_name_the_problem(tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        generate_demo_corpus(tmp_path, **kwargs)


def test_read_demo_errors_name_the_item(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_demo(tmp_path)
    out, utts = small
    (tmp_path / "manifest.jsonl").write_bytes((out / "manifest.jsonl").read_bytes())
    with pytest.raises(FileNotFoundError, match=utts[0].id):
        read_demo(tmp_path)


def test_cli_default_size_is_fast(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main([str(tmp_path), "--seed", "0"]) == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"default demo corpus took {elapsed:.1f} s"
    utts = read_demo(tmp_path)
    assert len(utts) == 4 * 2 * 24
    assert "192 synthetic utterances" in capsys.readouterr().out
    assert main([str(tmp_path / "x"), "--emotions", "happy,bored"]) == 2
    assert "'bored'" in capsys.readouterr().err
    params = json.loads((tmp_path / "README.txt").read_text().split("parameters: ")[1]
                        .splitlines()[0])
    assert params["utterances_per_speaker"] == 24
