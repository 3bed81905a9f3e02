"""Text-only models (no audio input, e.g. A1 on MELD text) served by the predictor.

Instances are ``{"text", "speaker"}`` (v2: BYTES ``text``, optional ``speaker``), the mode is
``text-only``, audio is refused with a 400 naming the instance, and each instance is predicted as
its own dialogue (a request carries no dialogue context).
"""

import asyncio

import httpx
import numpy as np
import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from prometheus_client import CollectorRegistry

from emoflow.monitoring.metrics import MODES, PredictionMetrics
from emoflow.serving.local import start_local_server, stop_local_server
from emoflow.serving.predictor import EmotionPredictor
from emoflow.serving.settings import ServingConfig
from serving.serving_helpers import LABELS, b64, free_port, register_text_only_model, register_tiny_model, wav_bytes

NAME = "emoflow-meld-text"
TEXTS = ["hello there", "I am so angry right now, leave me alone!", "what a lovely day it is"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("textonly")
    store, model = register_text_only_model(root, name=NAME)
    reg = CollectorRegistry()
    p = EmotionPredictor(NAME, f"registry://{NAME}@production", store=store,
                         config=ServingConfig(model_workers=1, prep_threads=1),
                         metrics=PredictionMetrics(reg))
    assert p.load()
    return {"p": p, "model": model, "store": store, "reg": reg}


def own_forward(model, text: str) -> np.ndarray:
    """The model's own forward on one tokenized utterance, alone in its dialogue."""
    batch = {**model.tokenize([text]), "dialogue": torch.tensor([0])}
    with torch.inference_mode():
        return torch.softmax(model(batch)["logits"].float(), -1)[0].numpy()


def run(p, payload):
    return asyncio.run(p.predict(payload))


def errors(reg, reason):
    return reg.get_sample_value("emoflow_request_errors_total", {"model": NAME, "reason": reason}) or 0


def test_load_needs_no_logmel_config(served):
    p = served["p"]
    assert p.ready and p.text_only
    assert p.runner.model.inputs == {"text"} and p.runner.feature_config is None
    assert p.labels == LABELS
    assert "text-only" in MODES


def test_metadata_declares_text_inputs_only(served):
    meta = served["p"].metadata()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("text", "BYTES", [-1]), ("speaker", "BYTES", [-1])]
    assert meta["versions"] == ["v1"] and meta["platform"]
    assert {o["name"] for o in meta["outputs"]} >= {"label", "probabilities", "mode", "protocol"}


def test_v1_text_only_matches_the_models_forward(served):
    p, model = served["p"], served["model"]
    res = run(p, {"instances": [{"text": t} for t in TEXTS[:2]] + [{"text": TEXTS[2], "speaker": "alice"}]})
    preds = res["predictions"]
    assert res["model_name"] == NAME and res["model_version"] == "v1"
    assert [r["mode"] for r in preds] == ["text-only"] * 3
    assert [r["protocol"] for r in preds] == ["strict"] * 3
    for r, t in zip(preds, TEXTS):
        got = np.array([r["probabilities"][lab] for lab in LABELS])
        want = own_forward(model, t)
        np.testing.assert_allclose(got, want, atol=2e-6)  # each alone: no context across instances
        assert r["label"] == LABELS[int(want.argmax())]
        assert r["modality_weights"] == {"audio": 0.0, "text": 1.0}
    assert served["reg"].get_sample_value("emoflow_modality_total", {"model": NAME, "mode": "text-only"}) >= 3
    # the check above tells context apart: the three as one dialogue would answer otherwise
    together = {**model.tokenize(TEXTS), "dialogue": torch.tensor([0, 0, 0])}
    with torch.inference_mode():
        linked = torch.softmax(model(together)["logits"].float(), -1).numpy()
    assert not np.allclose(linked, np.stack([own_forward(model, t) for t in TEXTS]), atol=1e-4)


def test_v2_text_only_matches_the_models_forward(served):
    p, model = served["p"], served["model"]
    req = InferRequest(NAME, infer_inputs=[InferInput("text", [2], "BYTES", TEXTS[:2]),
                                           InferInput("speaker", [2], "BYTES", ["bob", ""])])
    out = {o.name: o for o in run(p, req).outputs}
    assert out["mode"].data == ["text-only", "text-only"]
    assert out["protocol"].data == ["strict", "strict"]
    probs = np.array(out["probabilities"].data, dtype=np.float32).reshape(2, len(LABELS))
    want = np.stack([own_forward(model, t) for t in TEXTS[:2]])
    np.testing.assert_allclose(probs, want, atol=2e-6)
    assert out["label"].data == [LABELS[int(w.argmax())] for w in want]


@pytest.mark.parametrize("body, words, reason", [
    ({"instances": [{"text": "fine"}, {"text": "hi", "audio": b64(wav_bytes())}]}, ["instances[1]", "'audio'", "text only"],
     "unexpected_audio"),
    ({"instances": [{"audio": b64(wav_bytes())}]}, ["instances[0]", "'audio'"], "unexpected_audio"),
    ({"instances": [{"text": "fine"}, {"speaker": "alice"}]}, ["instances[1]", "'text' is required"], "missing_text"),
    ({"instances": [{"text": "   "}]}, ["instances[0]", "'text' is required"], "missing_text"),
    ({"instances": [{"text": 7}]}, ["instances[0]", "'text' must be a string"], "wrong_type"),
    ({"instances": [{"text": "hi", "colour": "red"}]}, ["instances[0]", "unknown fields"], "wrong_type"),
    ({"instances": []}, ["non-empty list"], "missing_text"),
])
def test_v1_client_errors_name_the_instance(served, body, words, reason):
    before = errors(served["reg"], reason)
    with pytest.raises(InvalidInput) as exc:
        run(served["p"], body)
    for w in words:
        assert w in str(exc.value)
    assert errors(served["reg"], reason) == before + 1


@pytest.mark.parametrize("inputs, words, reason", [
    ([InferInput("text", [1], "BYTES", ["hi"]), InferInput("audio", [1], "BYTES", [b64(wav_bytes())])],
     ["'audio'", "text only"], "unexpected_audio"),
    ([InferInput("speaker", [1], "BYTES", ["alice"])], ["input 'text' (BYTES) is required"], "missing_text"),
    ([InferInput("text", [2], "BYTES", ["hi", ""])], ["inputs[text][1]", "'text' is required"], "missing_text"),
    ([InferInput("text", [1], "BYTES", ["hi"]), InferInput("speaker", [2], "BYTES", ["a", "b"])],
     ["'speaker' has 2 values"], "wrong_type"),
])
def test_v2_client_errors(served, inputs, words, reason):
    before = errors(served["reg"], reason)
    with pytest.raises(InvalidInput) as exc:
        run(served["p"], InferRequest(NAME, infer_inputs=inputs))
    for w in words:
        assert w in str(exc.value)
    assert errors(served["reg"], reason) == before + 1


def test_audio_model_still_requires_audio(tmp_path):
    store = register_tiny_model(tmp_path)
    reg = CollectorRegistry()
    p = EmotionPredictor("emoflow", "registry://emoflow@production", store=store,
                         config=ServingConfig(model_workers=1, prep_threads=1), metrics=PredictionMetrics(reg))
    p.load()
    assert not p.text_only and p.runner.feature_config is not None
    with pytest.raises(InvalidInput, match=r"instances\[0\]: 'audio' is required"):
        run(p, {"instances": [{"text": "I am so happy today"}]})
    with pytest.raises(InvalidInput, match="input 'audio' \\(BYTES\\) is required"):
        run(p, InferRequest("emoflow", infer_inputs=[InferInput("text", [1], "BYTES", ["hi"])]))
    assert reg.get_sample_value("emoflow_request_errors_total", {"model": "emoflow", "reason": "missing_audio"}) == 2


@pytest.mark.slow
def test_http_round_trip(served):
    """The real server on 127.0.0.1 (a separate process, as `emoflow serve` starts it): 200s for
    text, 400s naming the instance."""
    port = free_port()
    url = start_local_server(f"{NAME}@production", served["store"], host="127.0.0.1", port=port, model_name=NAME)
    try:
        assert httpx.get(f"{url}/v2/models/{NAME}/ready", timeout=5).status_code == 200
        r = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [{"text": TEXTS[1]}]}, timeout=30)
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        assert pred["mode"] == "text-only" and pred["model"] == NAME and pred["version"] == "v1"
        np.testing.assert_allclose([pred["probabilities"][lab] for lab in LABELS],
                                   own_forward(served["model"], TEXTS[1]), atol=2e-6)
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]}
        r = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["mode"]["data"] == ["text-only"] * 2
        np.testing.assert_allclose(np.array(out["probabilities"]["data"]).reshape(2, len(LABELS)),
                                   np.stack([own_forward(served["model"], t) for t in TEXTS[:2]]), atol=2e-6)
        r = httpx.post(f"{url}/v1/models/{NAME}:predict",
                       json={"instances": [{"text": "ok"}, {"text": "ok", "audio": b64(wav_bytes())}]}, timeout=30)
        assert r.status_code == 400 and "instances[1]" in r.text and "'audio'" in r.text, r.text
        r = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [{"text": ""}]}, timeout=30)
        assert r.status_code == 400 and "instances[0]" in r.text and "'text' is required" in r.text, r.text
        body = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [b64(wav_bytes())]}]}
        r = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body, timeout=30)
        assert r.status_code == 400 and "'audio'" in r.text, r.text
        assert 'emoflow_modality_total{mode="text-only",model="emoflow-meld-text"} 3.0' in httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    finally:
        stop_local_server(port)
