"""The KServe predictor over real HTTP on 127.0.0.1 (a separate process, as deployed)."""

import time

import httpx
import pytest

from emoflow.serving.local import start_local_server, stop_local_server
from serving.serving_helpers import LABELS, b64, free_port, register_tiny_model, wav_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    store = register_tiny_model(root)
    port = free_port()
    url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port,
                             extra_args=["--max_audio_seconds", "3", "--max_request_bytes", "400000"])
    yield url
    stop_local_server(port)


def v1(url, body, **kw):
    return httpx.post(f"{url}/v1/models/emoflow:predict", json=body, timeout=30, **kw)


def v2(url, body):
    return httpx.post(f"{url}/v2/models/emoflow/infer", json=body, timeout=30)


def test_ready_and_bound_to_loopback(server):
    assert server.startswith("http://127.0.0.1:")
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server}/v2/models/emoflow/ready").status_code == 200


def test_v1_audio_and_text(server):
    r = v1(server, {"instances": [{"audio": b64(wav_bytes()), "text": "I am so happy today"}]})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["label"] in LABELS
    assert set(pred["probabilities"]) == set(LABELS)
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4
    assert pred["mode"] == "audio+text"
    assert pred["model"] == "emoflow" and pred["version"] == "v1"
    assert abs(sum(pred["modality_weights"].values()) - 1) < 1e-4


def test_v1_missing_text_answers_audio_only_and_says_so(server):
    r = v1(server, {"instances": [{"audio": b64(wav_bytes(fmt="FLAC"))}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["mode"] == "audio-only"


def test_v1_several_instances(server):
    body = {"instances": [{"audio": b64(wav_bytes(seed=i)), "text": "hello"} for i in range(3)]}
    r = v1(server, body)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_v2_infer(server):
    body = {"inputs": [
        {"name": "audio", "shape": [2], "datatype": "BYTES", "data": [b64(wav_bytes()), b64(wav_bytes(seed=2))]},
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["what a day", ""]},
    ]}
    r = v2(server, body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"][0] in LABELS
    assert out["probabilities"]["shape"] == [2, 4]
    assert out["mode"]["data"] == ["audio+text", "audio-only"]
    assert r.json()["model_version"] == "v1"


@pytest.mark.parametrize("body, words", [
    ({"instances": [{"audio": "%%% not base64 %%%"}]}, "base64"),
    ({"instances": [{"audio": b64(b"hello, this is not audio at all" * 20)}]}, "could not be decoded"),
    ({"instances": [{"audio": ""}]}, "empty"),
    ({"instances": [{"audio": 12345}]}, "must be a base64 string"),
    ({"instances": [{"audio": b64(wav_bytes()), "text": 7}]}, "'text' must be a string"),
    ({"instances": [{"text": "no audio"}]}, "'audio' is required"),
    ({"instances": []}, "non-empty list"),
    ({"instances": [{"audio": b64(wav_bytes(seconds=4.0))}]}, "limit is 3"),
    ({"instances": [{"audio": b64(wav_bytes(seconds=0.01))}]}, "minimum"),
    ({"instances": [{"audio": b64(wav_bytes()), "colour": "red"}]}, "unknown fields"),
])
def test_v1_client_errors_are_4xx_with_a_message(server, body, words):
    r = v1(server, body)
    assert 400 <= r.status_code < 500, r.text
    assert words in r.text


def test_request_over_the_byte_limit(server):
    big = wav_bytes(seconds=2.9, sr=48000, subtype="FLOAT")  # float32 WAV: ~557 kB, over the 400 kB limit
    assert len(big) > 400000
    r = v1(server, {"instances": [{"audio": b64(big)}]})
    assert 400 <= r.status_code < 500
    assert "400000" in r.text


@pytest.mark.parametrize("inputs, words", [
    ([{"name": "audio", "shape": [1], "datatype": "FP32", "data": [1.0]}], "BYTES"),
    ([{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}], "'audio'"),
    ([{"name": "audio", "shape": [1000000], "datatype": "BYTES", "data": [b64(wav_bytes())]}], "shape"),
    ([{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["@@@"]}], "audio"),
])
def test_v2_client_errors_are_4xx(server, inputs, words):
    r = v2(server, {"inputs": inputs})
    assert 400 <= r.status_code < 500, r.text
    assert words in r.text


def test_metrics_exposed_on_the_same_server(server):
    v1(server, {"instances": [{"audio": b64(wav_bytes()), "text": "fine"}]})
    text = httpx.get(f"{server}/metrics").text
    assert 'emoflow_predictions_total{' in text
    assert 'emoflow_reference_share{emotion="angry",model="emoflow",version="v1"} 0.25' in text
    assert 'emoflow_request_errors_total{' in text


def test_still_ready_after_bad_requests(server):
    for _ in range(5):
        v1(server, {"instances": [{"audio": "garbage!"}]})
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
