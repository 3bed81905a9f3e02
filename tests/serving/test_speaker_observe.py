"""SpeakerStats.observe: one utterance's several arrays (vectors, [L, H] blocks, frame rows) at once."""

import numpy as np
import pytest

from emoflow.evaluation.normalization import EPS
from emoflow.serving.speaker_stats import SpeakerStats


def utterance(rng, frames: int) -> dict:
    return {"h|layers_mean": rng.normal(2.0, 3.0, size=(3, 4)), "h|pooled": rng.normal(size=5),
            "h|frames": rng.normal(1.0, 2.0, size=(frames, 4))}


def test_observe_matches_population_statistics_over_the_utterances():
    rng = np.random.default_rng(0)
    st = SpeakerStats(max_speakers=4, min_utterances=3, max_bytes=1 << 20)
    utts = [utterance(rng, frames) for frames in (7, 3, 11)]
    rows = {"h|frames"}
    assert st.observe("a", utts[0], rows) is None and st.observe("a", utts[1], rows) is None  # strict
    out = st.observe("a", utts[2], rows)
    assert st.utterances("a") == 3
    for name in ("h|layers_mean", "h|pooled"):
        stack = np.stack([u[name] for u in utts])  # one row per utterance, every value its own feature
        want = (utts[2][name] - stack.mean(0)) / (stack.std(0) + EPS)
        assert out[name].shape == utts[2][name].shape and out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-5)
    every = np.concatenate([u["h|frames"] for u in utts])  # frames: statistics over every frame
    want = (utts[2]["h|frames"] - every.mean(0)) / (every.std(0) + EPS)
    np.testing.assert_allclose(out["h|frames"], want, rtol=1e-5, atol=1e-5)
    assert st.count("a", "h|frames") == 21 and st.count("a", "h|pooled") == 3


def test_observe_bounds_memory_and_isolates_speakers():
    rng = np.random.default_rng(1)
    u = utterance(rng, 4)
    per_speaker = SpeakerStats.speaker_bytes(u, {"h|frames"})
    assert per_speaker == sum(2 * 8 * n + 64 for n in (12, 5, 4))
    st = SpeakerStats(max_speakers=10, min_utterances=1, max_bytes=2 * per_speaker)
    st.observe("a", u, {"h|frames"})
    st.observe("b", utterance(rng, 9), {"h|frames"})
    before = st.observe("a", u, {"h|frames"})
    st.observe("c", utterance(rng, 2), {"h|frames"})  # evicts b (least recently used), by bytes
    assert st.speakers() == ["a", "c"] and st.utterances("b") == 0 and st.nbytes <= st.max_bytes
    after = st.observe("a", u, {"h|frames"})
    np.testing.assert_allclose(after["h|pooled"], before["h|pooled"], atol=1e-6)  # c changed nothing of a
    with pytest.raises(ValueError, match="more than max_bytes"):
        SpeakerStats(max_bytes=per_speaker - 1).observe("a", u, {"h|frames"})
    with pytest.raises(ValueError, match="NaN"):
        st.observe("a", {"h|pooled": np.array([np.nan] * 5)})
    assert st.forget("a") and st.utterances("a") == 0
