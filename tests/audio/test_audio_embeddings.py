"""Frozen-encoder embeddings: cached per encoder spec, one forward per utterance across runs."""

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from emoflow.audio.embeddings import EmbeddingCache, EmbeddingError, compute_embeddings, forward_count, load_embedding
from emoflow.corpora.record import Utterance
from emoflow.storage import open_store

TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 4, 4],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "mask_time_prob": 0.0, "layerdrop": 0.0,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True,
}
SPEECH = {"source": "wav2vec2", "init": "random", "config": TINY}


def make_store(root):
    return open_store(str(root))


def corpus(tmp_path, n=6, sessions=3):
    rng = np.random.default_rng(0)
    utts = []
    for i in range(n):
        path = tmp_path / f"w{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(4000 + 800 * i)).astype(np.float32), 16000, subtype="FLOAT")
        utts.append(Utterance(id=f"w{i}", audio=str(path), text=f"sentence number {i}", label="neutral",
                              speaker=f"s{i % sessions}", session=f"s{i % sessions}", corpus="demo"))
    return utts


def test_speech_cache_reuse_and_recompute(tmp_path):
    store = make_store(tmp_path / "store")
    utts = corpus(tmp_path)
    cache = EmbeddingCache(store, SPEECH, "speech", device="cpu", batch_size=4, progress=False)
    summary = {}
    keys = cache.ensure(utts, summary=summary)
    assert summary["computed"] == 6 and summary["reused"] == 0
    assert forward_count(cache.key_hash) == 6
    emb = load_embedding(store, keys["w2"])
    assert emb["pooled"].shape == (32,) and emb["frames"].shape[1] == 32
    np.testing.assert_allclose(emb["pooled"], emb["frames"].mean(0), atol=1e-5)
    assert store.exists(f"{cache.prefix}/spec.json")

    # a new cache object (another architecture / fold) reuses everything
    again = EmbeddingCache(store, SPEECH, "speech", device="cpu", progress=False)
    summary = {}
    assert again.ensure(utts, summary=summary) == keys
    assert summary["computed"] == 0 and forward_count(cache.key_hash) == 6
    batch = again.batch(utts[:3])
    assert batch["frames"].shape[0] == 3 and batch["frames_mask"].sum(1).tolist() == [
        load_embedding(store, keys[u.id])["frames"].shape[0] for u in utts[:3]]
    # values equal a direct forward of the same (seeded) encoder
    from emoflow.audio.encoders import load_speech_encoder
    from emoflow.audio.io import load_audio

    torch.manual_seed(0)
    enc = load_speech_encoder(SPEECH).eval()
    w = torch.from_numpy(load_audio(utts[2].audio))[None]
    with torch.inference_mode():
        frames, _ = enc(w, torch.ones_like(w, dtype=torch.bool))
    np.testing.assert_allclose(frames[0].numpy(), emb["frames"], atol=1e-4)

    # one changed parameter -> new key hash, recomputed
    changed = EmbeddingCache(store, {**SPEECH, "config": {**TINY, "num_hidden_layers": 1}}, "speech",
                             device="cpu", progress=False)
    assert changed.key_hash != cache.key_hash
    summary = {}
    changed.ensure(utts, summary=summary)
    assert summary["computed"] == 6 and forward_count(changed.key_hash) == 6


def test_one_forward_per_utterance_across_architectures_and_folds(tmp_path):
    """P2 in small: 3 consumers x 3 folds; with the cache each utterance is forwarded once."""
    utts = corpus(tmp_path, n=6, sessions=3)
    spec = {**SPEECH, "config": {**TINY, "hidden_size": 16, "intermediate_size": 32}}
    folds = [[u for u in utts if u.session == s] for s in ("s0", "s1", "s2")]

    def run(store_for_run):
        before = forward_count()
        for arch in range(3):
            for k in range(3):
                train = [u for j, f in enumerate(folds) if j != k for u in f]
                cache = EmbeddingCache(store_for_run(arch, k), spec, "speech", device="cpu", progress=False)
                x = cache.batch(train)["pooled"]
                assert x.shape == (len(train), 16)
                cache.batch(folds[k])  # test part
        return (forward_count() - before) / len(utts)

    shared = make_store(tmp_path / "shared")
    assert run(lambda arch, k: shared) == 1.0
    assert run(lambda arch, k: shared) == 0.0  # a second run computes nothing
    assert run(lambda arch, k: make_store(tmp_path / f"fresh-{arch}-{k}")) == 9.0  # no shared cache


def test_text_embeddings_and_step(tmp_path):
    from emoflow.assets import AssetMissing, asset_path

    try:
        asset_path("minilm")
    except AssetMissing as exc:
        pytest.skip(str(exc))
    store = make_store(tmp_path / "store")
    utts = corpus(tmp_path, n=3) + [Utterance(id="silent", audio=None, text=None, label=None, speaker="x",
                                             session="x", corpus="demo")]
    spec = {"source": "bert", "init": "random", "tokenizer": "minilm",
            "config": {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48}}
    summary = {}
    out = compute_embeddings(utts, store, spec, "text", device="cpu", summary=summary, progress=False)
    assert [u.id for u in out] == [u.id for u in utts] and summary["no_input"] == 1
    key = next(iter(out[0].extra["embeddings"].values()))
    emb = load_embedding(store, key)
    assert emb["pooled"].shape == (24,) and emb["frames"].shape[1] == 24
    assert "embeddings" not in out[3].extra
    # changed text -> its own key
    changed = dataclasses.replace(utts[0], text="another sentence")
    out2 = compute_embeddings([changed], store, spec, "text", device="cpu", progress=False)
    assert next(iter(out2[0].extra["embeddings"].values())) != key


def test_bad_audio_quarantined_or_named(tmp_path):
    store = make_store(tmp_path / "store")
    utts = corpus(tmp_path, n=2)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nonsense")
    broken = dataclasses.replace(utts[0], id="broken", audio=str(bad))
    with pytest.raises(EmbeddingError, match="broken"):
        EmbeddingCache(store, SPEECH, device="cpu", progress=False).ensure(utts + [broken])
    quarantine = []
    out = compute_embeddings(utts + [broken], store, SPEECH, "speech", device="cpu", quarantine=quarantine,
                             progress=False)
    assert [u.id for u in out] == ["w0", "w1"] and quarantine[0]["id"] == "broken"
    with pytest.raises(ValueError, match="kind"):
        EmbeddingCache(store, SPEECH, "video")
    with pytest.raises(EmbeddingError, match="duplicate"):
        EmbeddingCache(store, SPEECH, device="cpu").ensure(utts + utts[:1])
