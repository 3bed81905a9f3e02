"""Feature step: log-mel in the store keyed by config hash, reuse, recompute, quarantine."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED_DATA
from emoflow.audio.features import FeatureError, extract_features, iter_logmel, load_logmel
from emoflow.audio.logmel import LogMelConfig, logmel
from emoflow.audio.io import load_audio
from emoflow.corpora.record import Utterance
from emoflow.storage import open_store


def make_store(root):
    return open_store(str(root))


def make_corpus(tmp_path, n=4, speakers=2):
    rng = np.random.default_rng(0)
    utts = []
    for i in range(n):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000 + 1600 * i)).astype(np.float32), 16000, subtype="FLOAT")
        utts.append(Utterance(id=f"u{i}", audio=str(path), text=f"text {i}", label="neutral",
                              speaker=f"s{i % speakers}", session=f"s{i % speakers}", corpus="demo"))
    return utts


def test_extract_store_reuse_and_recompute(tmp_path):
    store = make_store(tmp_path / "store")
    utts = make_corpus(tmp_path)
    cfg = LogMelConfig()
    summary = {}
    out = extract_features(utts, store, cfg, summary=summary, progress=False)
    assert summary["computed"] == 4 and summary["reused"] == 0
    assert [u.id for u in out] == [u.id for u in utts]
    assert all("logmel" not in u.extra for u in utts)  # inputs untouched
    for u in out:
        key = u.extra["logmel"]
        assert key.startswith(f"features/logmel/{cfg.hash()}/demo/")
        feats = load_logmel(store, key)
        assert feats.dtype == np.float32 and feats.shape[1] == 128
        np.testing.assert_allclose(feats, logmel(load_audio(u.audio), cfg), atol=1e-5)
    assert store.exists(f"features/logmel/{cfg.hash()}/config.json")

    again = {}
    out2 = extract_features(utts, store, cfg, summary=again, progress=False)
    assert again["computed"] == 0 and again["reused"] == 4
    assert [u.extra["logmel"] for u in out2] == [u.extra["logmel"] for u in out]

    changed = {}
    out3 = extract_features(utts, store, dataclasses.replace(cfg, hop_ms=20), summary=changed, progress=False)
    assert changed["computed"] == 4 and changed["reused"] == 0
    assert load_logmel(store, out3[0].extra["logmel"]).shape[0] == 1 + 8000 // 320

    # a new utterance among old ones: only it is computed
    extra = make_corpus(tmp_path, n=5)[4]
    one = {}
    extract_features(utts + [extra], store, cfg, summary=one, progress=False)
    assert (one["computed"], one["reused"]) == (1, 4)


def test_segment_times_and_changed_audio_get_own_keys(tmp_path):
    store = make_store(tmp_path / "store")
    u = make_corpus(tmp_path, n=1)[0]
    seg = dataclasses.replace(u, start=0.1, end=0.4)
    a, b = extract_features([u], store, progress=False)[0], extract_features([seg], store, progress=False)[0]
    assert a.extra["logmel"] != b.extra["logmel"]
    assert load_logmel(store, b.extra["logmel"]).shape[0] == 1 + 4800 // 160


def test_quarantine_and_errors(tmp_path):
    store = make_store(tmp_path / "store")
    utts = make_corpus(tmp_path, n=2)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    broken = dataclasses.replace(utts[0], id="broken", audio=str(bad))
    text_only = dataclasses.replace(utts[0], id="textonly", audio=None)
    with pytest.raises(FeatureError, match="broken"):
        extract_features(utts + [broken], store, progress=False)
    quarantine, summary = [], {}
    out = extract_features(utts + [broken, text_only], store, quarantine=quarantine, summary=summary, progress=False)
    assert [u.id for u in out] == ["u0", "u1", "textonly"]
    assert "logmel" not in out[2].extra
    assert len(quarantine) == 1 and quarantine[0]["id"] == "broken" and "bad.wav" in quarantine[0]["reason"]
    assert summary["total"] == len(out) + len(quarantine) and summary["no_audio"] == 1
    with pytest.raises(FeatureError, match="duplicate"):
        extract_features(utts + [utts[0]], store, progress=False)
    with pytest.raises(KeyError):
        load_logmel(store, "features/logmel/none/missing.npy")


def test_speaker_normalisation(tmp_path):
    store = make_store(tmp_path / "store")
    utts = make_corpus(tmp_path, n=4, speakers=2)
    out = extract_features(utts, store, LogMelConfig(normalize="speaker"), progress=False)
    for spk in ("s0", "s1"):
        frames = np.concatenate([load_logmel(store, u.extra["logmel"]) for u in out if u.speaker == spk])
        np.testing.assert_allclose(frames.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(frames.std(axis=0), 1, atol=1e-3)
    # one utterance alone is NOT zero-mean: it depends on the speaker's other utterances
    single = load_logmel(store, out[0].extra["logmel"])
    assert np.abs(single.mean(axis=0)).max() > 1e-3
    # a different utterance set for a speaker gives other statistics and new keys
    out_sub = extract_features(utts[:3], store, LogMelConfig(normalize="speaker"), progress=False)
    # (u1 and u3 are speaker s1; utts[:3] drops u3, so s1's keys change and s0's stay)
    assert out_sub[0].extra["logmel"] == out[0].extra["logmel"]
    assert out_sub[1].extra["logmel"] != out[1].extra["logmel"]
    alone = load_logmel(store, out_sub[1].extra["logmel"])
    np.testing.assert_allclose(alone.mean(axis=0), 0, atol=1e-4)  # u1 is now s1's only utterance


@pytest.mark.realdata
def test_ravdess_features(tmp_path):
    root = Path(SHARED_DATA) / "ravdess"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    files = sorted(root.glob("Actor_0[12]/*.flac"))[:8]
    utts = [Utterance(id=f.stem, audio=str(f), text=None, label=None, speaker=f.parent.name,
                      session=f.parent.name, corpus="ravdess") for f in files]
    store = make_store(tmp_path / "store")
    out = extract_features(utts, store, progress=False)
    for u in out:
        feats = load_logmel(store, u.extra["logmel"])
        assert feats.shape == (1 + int(round(sf.info(u.audio).duration * 16000)) // 160, 128)
    # the fast path (soundfile + batched STFT) matches librosa.load + melspectrogram (P1 values)
    import librosa

    cfg = LogMelConfig(normalize="none")
    for i, feats in iter_logmel([u.audio for u in utts], cfg, batch_size=3):
        y, _ = librosa.load(utts[i].audio, sr=16000)
        mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=160, win_length=400,
                                             n_mels=128, center=True, pad_mode="constant", power=2.0)
        ref = np.log(np.maximum(mel, cfg.log_floor)).T
        assert np.linalg.norm(feats - ref) / np.linalg.norm(ref) < 1e-3
        assert np.abs(feats - ref).max() < 1e-2


def test_features_in_s3_store_from_s3_audio(tmp_path, s3_store):
    """Audio read from s3:// and features written to a real S3 server (SeaweedFS on loopback)."""
    utts = make_corpus(tmp_path, n=2)
    for u in utts:
        s3_store.put_file(f"audio/{u.id}.wav", u.audio)
    remote = [dataclasses.replace(u, audio=s3_store.uri(f"audio/{u.id}.wav")) for u in utts]
    summary = {}
    out = extract_features(remote, s3_store, summary=summary, progress=False)
    assert summary["computed"] == 2
    for u, local in zip(out, utts):
        np.testing.assert_allclose(load_logmel(s3_store, u.extra["logmel"]), logmel(load_audio(local.audio)), atol=1e-5)
    again = {}
    extract_features(remote, s3_store, summary=again, progress=False)
    assert again["reused"] == 2 and again["computed"] == 0
