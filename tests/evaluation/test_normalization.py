"""Speaker-normalisation protocol: statistics, normaliser, and the protocol flag reaching the report."""

import json

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from emoflow import steps
from emoflow.corpora import Utterance
from emoflow.evaluation.normalization import (
    SpeakerNormalizer,
    protocol_name,
    speaker_statistics,
    write_speaker_stats,
    zscore_by_group,
)
from emoflow.storage import open_store


def test_zscore_by_group_uses_each_groups_own_statistics():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(10, 3, (20, 4)), rng.normal(-5, 0.5, (10, 4))])
    g = ["a"] * 20 + ["b"] * 10
    z = zscore_by_group(x, g)
    for grp in (slice(0, 20), slice(20, 30)):
        assert np.allclose(z[grp].mean(0), 0, atol=1e-5) and np.allclose(z[grp].std(0), 1, atol=1e-3)
    with pytest.raises(ValueError, match="3 groups for 30 rows"):
        zscore_by_group(x, ["a", "b", "c"])


def _utts(store, rng):
    utts = []
    for i in range(6):
        spk = "s1" if i < 4 else "s2"
        key = f"embeddings/speech/h1/toy/u{i}.safetensors"
        store.put_bytes(key, st_save({"pooled": rng.normal(3 * (spk == "s1"), 1, 5).astype(np.float32),
                                      "frames": rng.normal(0, 2, (3 + i, 5)).astype(np.float32)}))
        utts.append(Utterance(id=f"u{i}", audio=f"u{i}.wav", text="", label="calm", speaker=spk, session=spk,
                              corpus="toy", extra={"embeddings": {"h1": key}}))
    return utts


def test_statistics_and_normaliser_match_numpy(tmp_path):
    store = open_store(str(tmp_path))
    rng = np.random.default_rng(1)
    utts = _utts(store, rng)
    from emoflow.audio.embeddings import load_embedding

    stats = speaker_statistics(utts, store)
    pooled = np.stack([load_embedding(store, u.extra["embeddings"]["h1"])["pooled"] for u in utts[:4]])
    frames = np.concatenate([load_embedding(store, u.extra["embeddings"]["h1"])["frames"] for u in utts[:4]])
    assert np.allclose(stats["s1"]["h1"]["pooled"][0], pooled.mean(0), atol=1e-5)
    assert np.allclose(stats["s1"]["h1"]["pooled"][1], pooled.std(0), atol=1e-4)
    assert np.allclose(stats["s1"]["h1"]["frames"][0], frames.mean(0), atol=1e-5)
    marked, key = write_speaker_stats(utts, store)
    assert all(u.extra["speaker_norm"] == key for u in marked) and store.exists(key)
    norm = SpeakerNormalizer.from_utterances(marked, store)
    z = np.stack([norm.apply(u, "h1", load_embedding(store, u.extra["embeddings"]["h1"]))["pooled"]
                  for u in marked[:4]])
    assert np.allclose(z.mean(0), 0, atol=1e-4)
    assert SpeakerNormalizer.from_utterances(utts, store) is None  # unmarked: strict
    with pytest.raises(ValueError, match="mix speaker-normalisation"):
        SpeakerNormalizer.from_utterances(marked[:2] + utts[2:], store)
    stranger = Utterance(id="z", audio="z.wav", text="", label="calm", speaker="s9", session="s9", corpus="toy")
    with pytest.raises(ValueError, match="speaker 's9'"):
        norm.apply(stranger, "h1", {"pooled": np.zeros(5, np.float32)})
    nospk = Utterance(id="q", audio="q.wav", text="", label="calm", speaker="", session="x", corpus="toy",
                      extra=utts[0].extra)
    with pytest.raises(ValueError, match="'q' has no speaker"):
        speaker_statistics([nospk], store)


def test_protocol_flag_reaches_the_report(tmp_path):
    assert protocol_name(False) == "strict" and protocol_name(True) == "speaker-normalised"
    pred = {"arch": "a3", "labels": ["a", "b"], "preset": {"name": "offline-speech"},
            "folds": {"f1": {"y_true": ["a", "b", "a", "b"], "y_pred": ["a", "b", "b", "b"]}}}
    (tmp_path / "p.json").write_text(json.dumps(pred))
    for protocol in ("strict", "speaker-normalised"):
        out = tmp_path / protocol
        summary = steps.evaluate(str(tmp_path / "p.json"), str(out), corpus="toy", protocol=protocol)
        assert summary["protocol"] == protocol
        md = "\n".join(p.read_text() for p in out.glob("*.md"))
        assert protocol in md
    strict_md = "\n".join(p.read_text() for p in (tmp_path / "strict").glob("*.md"))
    assert "speaker-normalised" not in strict_md.replace("never mixed with speaker-normalised", "")
    with pytest.raises(ValueError, match="unknown protocol"):
        steps.evaluate(str(tmp_path / "p.json"), str(tmp_path / "bad"), protocol="lenient")


def test_features_step_rejects_speaker_norm_without_encoders(tmp_path):
    from emoflow.corpora import write_manifest

    write_manifest(tmp_path / "m.jsonl", [])
    with pytest.raises(ValueError, match="speaker_norm needs encoders"):
        steps.features(str(tmp_path / "m.jsonl"), str(tmp_path / "o.jsonl"), str(tmp_path / "store"),
                       {"speaker_norm": True})
