"""Serving-time per-speaker running statistics: bounded memory, LRU eviction, isolation, warm-up."""

import threading

import numpy as np
import pytest

from emoflow.serving.speaker_stats import SpeakerStats


def test_normalises_only_after_min_utterances():
    st = SpeakerStats(max_speakers=10, min_utterances=3, max_bytes=1 << 20)
    rng = np.random.default_rng(0)
    xs = rng.normal(5.0, 2.0, size=(3, 4))
    probe = np.array([1.0, 2.0, 3.0, 4.0])
    for k, x in enumerate(xs[:2]):
        st.update("a", x)
        assert not st.ready("a")
        assert np.array_equal(st.normalize("a", probe), probe.astype(np.float32))  # strict until warm
    st.update("a", xs[2])
    assert st.ready("a") and st.count("a") == 3
    expected = (probe - xs.mean(0)) / (xs.std(0) + 1e-5)
    assert np.allclose(st.normalize("a", probe), expected, atol=1e-5)
    assert np.array_equal(st.normalize(None, probe), probe.astype(np.float32))  # no speaker field: strict


def test_speakers_are_isolated():
    st = SpeakerStats(max_speakers=10, min_utterances=2)
    for x in ([0.0, 0.0], [2.0, 2.0]):
        st.update("a", x)
    before = st.normalize("a", [1.0, 3.0])
    for _ in range(50):
        st.update("b", np.array([100.0, -100.0]) + np.random.default_rng(1).normal(size=2))
    assert np.array_equal(st.normalize("a", [1.0, 3.0]), before)
    assert st.count("a") == 2 and st.count("b") == 50
    st.update("a", [4.0, 4.0], name="other")  # another feature of the same speaker is separate too
    assert np.array_equal(st.normalize("a", [1.0, 3.0]), before)


def test_lru_eviction_by_count_and_bytes():
    st = SpeakerStats(max_speakers=3, min_utterances=1, max_bytes=1 << 20)
    for s in ("a", "b", "c"):
        st.update(s, [1.0, 2.0])
    st.normalize("a", [1.0, 2.0])  # a becomes most recently used
    st.update("d", [1.0, 2.0])
    assert st.speakers() == ["c", "a", "d"] and "b" not in st and st.evictions == 1
    dim = 1000
    per_speaker = 2 * dim * 8 + 64
    small = SpeakerStats(max_speakers=100, min_utterances=1, max_bytes=3 * per_speaker)
    for k in range(10):
        small.update(f"s{k}", np.ones(dim))
        assert small.nbytes <= small.max_bytes
    assert len(small) == 3 and small.speakers() == ["s7", "s8", "s9"]
    assert small.count("s0") == 0 and not small.ready("s0")


def test_memory_stays_bounded_under_many_speakers():
    st = SpeakerStats(max_speakers=50, min_utterances=2, max_bytes=40_000)
    rng = np.random.default_rng(2)
    for k in range(2000):
        st.update(f"spk{k % 700}", rng.normal(size=64))
        assert st.nbytes <= 40_000 and len(st) <= 50
    assert st.nbytes == sum(2 * 64 * 8 + 64 for _ in st.speakers())


def test_bad_input_is_named():
    st = SpeakerStats(max_speakers=2, min_utterances=1, max_bytes=10_000)
    with pytest.raises(ValueError, match="non-empty string"):
        st.update("", [1.0])
    with pytest.raises(ValueError, match="'x'.*NaN"):
        st.update("x", [np.nan])
    st.update("x", [1.0, 2.0])
    with pytest.raises(ValueError, match="'x'.*dimension 3"):
        st.update("x", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="exceeds max_bytes"):
        st.update("y", np.ones(10_000))
    with pytest.raises(ValueError, match=">= 1"):
        SpeakerStats(max_speakers=0)
    assert st.forget("x") and not st.forget("x") and st.nbytes == 0


def test_concurrent_updates_are_counted():
    st = SpeakerStats(max_speakers=10, min_utterances=1)

    def worker(name):
        for _ in range(200):
            st.update(name, [1.0, 2.0, 3.0])

    threads = [threading.Thread(target=worker, args=(f"s{k % 3}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [st.count(f"s{k}") for k in range(3)] == [400, 400, 400]
