"""Open Inference Protocol conformance, driven by real third-party clients against the predictor
running on 127.0.0.1: NVIDIA's ``tritonclient[http]`` and KServe's ``InferenceRESTClient``.

Server and model metadata, readiness, an infer request built from the model metadata alone (in
JSON and binary tensor modes), requested outputs with per-output ``binary_data``, the versioned
routes, and every v2 response body validated against the OIP facts pinned in ``oip_schema``.
"""

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from serving import oip_schema
from serving.serving_helpers import LABELS, b64, tiny_server, wav_bytes

pytestmark = pytest.mark.slow

MODEL = "emoflow"
VERSION = "v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("oip"), "--max_audio_seconds", "3", "--max_request_bytes", "400000") as (url, _):
        yield url


@pytest.fixture(scope="module")
def triton(server):
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def metadata(server):
    r = httpx.get(f"{server}/v2/models/{MODEL}")
    assert r.status_code == 200, r.text
    return r.json()


def v2_body(r: httpx.Response) -> dict:
    """The JSON part of a v2 response (the whole body, or the header of a binary one)."""
    n = r.headers.get("inference-header-content-length")
    return json.loads(r.content[:int(n)] if n is not None else r.content)


# -- metadata and health ----------------------------------------------------------------------

def test_server_metadata_lists_the_binary_extension(server, triton):
    meta = triton.get_server_metadata()
    oip_schema.validate(meta, oip_schema.SERVER_METADATA)
    assert "binary_tensor_data" in meta["extensions"]
    assert httpx.get(f"{server}/v2").json() == meta


def test_model_metadata_declares_the_real_inputs_and_outputs(triton, metadata):
    oip_schema.validate(metadata, oip_schema.MODEL_METADATA)
    assert metadata["name"] == MODEL and metadata["versions"] == [VERSION] and metadata["platform"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
        "audio": ("BYTES", [-1]), "text": ("BYTES", [-1]), "speaker": ("BYTES", [-1])}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "label": ("BYTES", [-1]), "probabilities": ("FP32", [-1, len(LABELS)]), "mode": ("BYTES", [-1]),
        "protocol": ("BYTES", [-1]), "modality_weights": ("FP32", [-1, 2])}
    assert triton.get_model_metadata(MODEL) == metadata
    assert triton.get_model_metadata(MODEL, model_version=VERSION) == metadata


def test_health_and_readiness_through_both_clients(server, triton):
    from kserve.inference_client import InferenceRESTClient, RESTConfig

    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, model_version=VERSION)
    assert not triton.is_model_ready(MODEL, model_version="v999")

    async def kserve_checks():
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as client:
            return (await client.is_server_live(server), await client.is_server_ready(server),
                    await client.is_model_ready(server, MODEL))

    assert asyncio.run(kserve_checks()) == (True, True, True)
    r = httpx.get(f"{server}/v2/models/{MODEL}/versions/{VERSION}/ready")
    assert r.status_code == 200
    oip_schema.validate(r.json(), oip_schema.MODEL_READY)


# -- infer built from the metadata alone ----------------------------------------------------------

def sample(name: str) -> bytes:
    """What a client puts in each declared input, knowing only its name."""
    return {"audio": wav_bytes(seed=3), "text": b"I am so happy today", "speaker": b"alice"}[name]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_from_metadata(triton, metadata, binary):
    import tritonclient.http as triton_http

    inputs = []
    for spec in metadata["inputs"]:
        shape = [1 if d == -1 else d for d in spec["shape"]]
        inp = triton_http.InferInput(spec["name"], shape, spec["datatype"])
        value = sample(spec["name"])
        if spec["name"] == "audio" and not binary:  # JSON strings are text: audio goes as base64
            value = base64.b64encode(value)
        inp.set_data_from_numpy(np.array([value], dtype=object), binary_data=binary)
        inputs.append(inp)
    outputs = [triton_http.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]]
    result = triton.infer(MODEL, inputs, outputs=outputs)
    body = result.get_response()
    oip_schema.validate(body, oip_schema.INFERENCE_RESPONSE)
    assert body["model_version"] == VERSION
    probs = result.as_numpy("probabilities")
    assert probs.shape == (1, len(LABELS)) and abs(float(probs.sum()) - 1) < 1e-4
    label = result.as_numpy("label")[0]
    assert (label.decode() if isinstance(label, bytes) else label) in LABELS
    mode = result.as_numpy("mode")[0]
    assert (mode.decode() if isinstance(mode, bytes) else mode) == "audio+text"


def test_tritonclient_versioned_infer_and_requested_outputs(triton):
    import tritonclient.http as triton_http

    audio = triton_http.InferInput("audio", [2], "BYTES")
    audio.set_data_from_numpy(np.array([wav_bytes(seed=1), wav_bytes(seed=2)], dtype=object))
    wanted = [triton_http.InferRequestedOutput("probabilities", binary_data=True),
              triton_http.InferRequestedOutput("label", binary_data=False)]
    result = triton.infer(MODEL, [audio], model_version=VERSION, outputs=wanted)
    body = result.get_response()
    oip_schema.validate(body, oip_schema.INFERENCE_RESPONSE)
    assert [o["name"] for o in body["outputs"]] == ["probabilities", "label"]  # only those, in that order
    assert "data" not in body["outputs"][0] and "data" in body["outputs"][1]
    assert result.as_numpy("probabilities").shape == (2, len(LABELS))


def test_unknown_requested_output_is_a_400_naming_it(triton):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    audio = triton_http.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([wav_bytes()], dtype=object))
    with pytest.raises(InferenceServerException, match="'colour' is not an output") as info:
        triton.infer(MODEL, [audio], outputs=[triton_http.InferRequestedOutput("colour")])
    assert info.value.status() == "400"


def test_other_version_is_a_404(server):
    body = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [b64(wav_bytes())]}]}
    r = httpx.post(f"{server}/v2/models/{MODEL}/versions/v999/infer", json=body, timeout=30)
    assert r.status_code == 404
    oip_schema.validate(r.json(), oip_schema.ERROR)
    assert "v999" in r.json()["error"] and VERSION in r.json()["error"]
    r = httpx.post(f"{server}/v2/models/{MODEL}/versions/{VERSION}/infer", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == VERSION


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kserve_inference_rest_client(server, metadata, binary):
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    inputs = []
    for spec in metadata["inputs"]:
        value = sample(spec["name"])
        if spec["name"] == "audio" and not binary:
            value = base64.b64encode(value)
        inp = InferInput(spec["name"], [1], spec["datatype"])
        inp.set_data_from_numpy(np.array([value], dtype=object), binary_data=binary)
        inputs.append(inp)
    request = InferRequest(MODEL, inputs, request_id="req-7",
                           request_outputs=[RequestedOutput("label", {"binary_data": binary}),
                                            RequestedOutput("probabilities", {"binary_data": binary})])

    async def call():
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
            return await client.infer(server, request, model_name=MODEL)

    response = asyncio.run(call())
    assert response.id == "req-7" and response.model_name == MODEL  # (from_bytes drops model_version)
    assert [o.name for o in response.outputs] == ["label", "probabilities"]
    probs = response.outputs[1].as_numpy()
    assert probs.shape == (1, len(LABELS)) and abs(float(probs.sum()) - 1) < 1e-4


# -- response bodies against the pinned schema --------------------------------------------------

@pytest.mark.parametrize("body", [
    {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [b64(wav_bytes())]}]},
    {"id": "x", "inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [b64(wav_bytes())]}],
     "parameters": {"binary_data_output": True}},
    {"inputs": [{"name": "audio", "shape": [1, 1], "datatype": "BYTES", "data": [[b64(wav_bytes())]]}],
     "outputs": [{"name": "mode"}, {"name": "probabilities", "parameters": {"binary_data": True}}]},
], ids=["plain", "all-binary", "requested"])
def test_every_v2_answer_matches_the_schema(server, body):
    r = httpx.post(f"{server}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    doc = v2_body(r)
    oip_schema.validate(doc, oip_schema.INFERENCE_RESPONSE)
    if "outputs" in body:
        assert [o["name"] for o in doc["outputs"]] == ["mode", "probabilities"]
    sizes = sum(o.get("parameters", {}).get("binary_data_size", 0) for o in doc["outputs"])
    header = int(r.headers.get("inference-header-content-length", len(r.content)))
    assert header + sizes == len(r.content)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v2/models/nope", 404),
    ("GET", "/v2/models/nope/ready", 404),
    ("GET", "/no/such/route", 404),
    ("GET", f"/v2/models/{MODEL}/infer", 405),
    ("DELETE", "/v2/health/ready", 405),
])
def test_errors_are_error_objects(server, method, path, status):
    r = httpx.request(method, f"{server}{path}", timeout=30)
    assert r.status_code == status
    oip_schema.validate(r.json(), oip_schema.ERROR)


@pytest.mark.parametrize("encode", [
    lambda raw: base64.encodebytes(raw).decode(),                      # MIME: lines of 76 + newlines
    lambda raw: base64.urlsafe_b64encode(raw).decode(),
    lambda raw: base64.b64encode(raw).decode().rstrip("="),
], ids=["mime", "urlsafe", "unpadded"])
def test_base64_variants_decode(server, encode):
    raw = wav_bytes(seconds=0.5, seed=11)
    body = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [encode(raw)]}]}
    r = httpx.post(f"{server}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("text, reason", [
    ("QUJD*RA==", "character '*' at position 4"),
    ("QUJDR", "cannot encode whole bytes"),
    ("QU-J+DRA", "mixes the standard"),
])
def test_bad_base64_says_why(server, text, reason):
    r = httpx.post(f"{server}/v1/models/{MODEL}:predict", json={"instances": [{"audio": text}]}, timeout=30)
    assert r.status_code == 400
    assert reason in r.json()["error"] and "instances[0]" in r.json()["error"]
