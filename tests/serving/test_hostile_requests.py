"""Hostile and unusual requests over real HTTP (issue 15, items 2, 3 and 5): error answers are
small and never echo the input, client errors log one short line and no traceback, loud audio is
the client's 400 (not a 500) and counts nothing, connections survive errors, and a JSON body is
JSON whatever its Content-Type or (gzip/deflate) Content-Encoding says."""

import asyncio
import gzip
import http.client
import io
import json
import re
import subprocess
import threading
import zlib

import httpx
import numpy as np
import pytest
import soundfile as sf

from emoflow.config import home
from serving.serving_helpers import LABELS, b64, free_port, register_tiny_model, tiny_server, wav_bytes

pytestmark = pytest.mark.slow

V1 = "/v1/models/emoflow:predict"
V2 = "/v2/models/emoflow/infer"
MARKER = "PAYLOAD-MARKER-"  # in every hostile payload: must appear in no answer and no log line
HEAP = re.compile(r" at 0x[0-9a-fA-F]+")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("hostile"), "--max_audio_seconds", "3",
                     "--max_request_bytes", "400000") as (url, port):
        yield url, home() / "serve" / f"{port}.log"


def loud_wav(amplitude: float = 1e18) -> bytes:
    t = np.arange(16000) / 16000
    buf = io.BytesIO()
    sf.write(buf, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def binary_v2(raw: bytes) -> tuple[bytes, dict]:
    """A v2 request carrying `raw` as the one BYTES element of input 'audio' (binary extension)."""
    header = json.dumps({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw) + 4}}]}).encode()
    body = header + len(raw).to_bytes(4, "little") + raw
    return body, {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}


def predictions_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("emoflow_predictions_total{"))


# -- item 2: bounded error answers ------------------------------------------------------------------

def test_raw_wav_through_the_binary_extension_is_accepted(server):
    url, _ = server
    body, headers = binary_v2(wav_bytes(seconds=2.0, subtype="FLOAT"))  # raw file bytes, not UTF-8
    r = httpx.post(f"{url}{V2}", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["outputs"][0]["data"][0] in LABELS


def _hostile_cases():
    blob = (MARKER + "x" * 1000) * 290                            # ~295 kB of text
    noise = (MARKER.encode() + bytes(range(256)) * 4) * 270       # ~280 kB, not audio, not UTF-8
    body, headers = binary_v2(noise)
    return [
        ("binary-not-audio", V2, body, headers),
        ("v1-not-audio", V1, json.dumps({"instances": [{"audio": b64(noise)}]}).encode(), {}),
        ("v2-bad-structure", V2, json.dumps({"inputs": [{"name": "audio", "shape": blob, "data": [1]}]}).encode(), {}),
        ("v2-bad-datatype", V2, json.dumps({"inputs": [{"name": "audio", "shape": [1], "datatype": blob,
                                                        "data": ["AAAA"]}]}).encode(), {}),
        ("v1-unknown-field", V1, json.dumps({"instances": [{"audio": "AAAA", blob: 1}]}).encode(), {}),
        ("invalid-json", V1, ('{"instances": [{"audio": "' + blob).encode(), {}),
        ("v2-invalid-json", V2, ('{"inputs": [' + blob).encode(), {}),
        ("text-too-long", V1, json.dumps({"instances": [{"audio": b64(wav_bytes()), "text": blob}]}).encode(), {}),
    ]


@pytest.mark.parametrize("name, path, body, headers", _hostile_cases(), ids=[c[0] for c in _hostile_cases()])
def test_error_answers_are_small_and_never_echo_the_input(server, name, path, body, headers):
    url, _ = server
    r = httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json", **headers}, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert len(r.content) <= 4096, len(r.content)
    assert MARKER not in r.text and not HEAP.search(r.text)
    assert set(r.json()) == {"error"} and r.json()["error"]
    assert "binary_data=True" not in r.text  # the old, wrong hint


def test_client_errors_log_one_short_line_and_no_traceback(server):
    url, log_file = server
    start = log_file.stat().st_size
    for _, path, body, headers in _hostile_cases():
        httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json", **headers}, timeout=30)
    logged = log_file.read_bytes()[start:].decode("utf-8", "replace")
    assert logged.count(" 400 ") + logged.count(": 400") >= 1
    assert "Traceback" not in logged
    assert MARKER not in logged and not HEAP.search(logged)
    assert max(len(line) for line in logged.splitlines()) < 1000


def test_decoder_errors_name_the_instance_without_heap_addresses(server):
    url, _ = server
    r = httpx.post(f"{url}{V1}", json={"instances": [{"audio": b64(wav_bytes())}, {"audio": b64(b"not audio" * 50)}]},
                   timeout=30)
    assert r.status_code == 400
    assert "instances[1]" in r.json()["error"] and "could not be decoded" in r.json()["error"]
    assert not HEAP.search(r.text)


# -- item 3: loud audio, half-counted batches, keep-alive ------------------------------------------------

@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_loud_audio_is_the_clients_400_naming_it_and_counts_nothing(server, protocol):
    url, _ = server
    good, loud = b64(wav_bytes()), b64(loud_wav())
    before = predictions_total(url)
    if protocol == "v1":
        r = httpx.post(f"{url}{V1}", json={"instances": [{"audio": good}, {"audio": loud}]}, timeout=30)
        where = "instances[1]"
    else:
        r = httpx.post(f"{url}{V2}", json={"inputs": [{"name": "audio", "shape": [2], "datatype": "BYTES",
                                                       "data": [good, loud]}]}, timeout=30)
        where = "inputs[audio][1]"
    assert r.status_code == 400, r.text
    # refused by the decoder (absurd amplitude) or, failing that, by the features' finiteness check
    assert where in r.json()["error"] and re.search("samples reach|not finite", r.json()["error"])
    assert predictions_total(url) == before  # the good instance of a refused request is not counted
    assert httpx.post(f"{url}{V1}", json={"instances": [{"audio": good}]}, timeout=30).status_code == 200
    assert predictions_total(url) == before + 1


def _same_connection_sequence(host: str, port: int, requests: list) -> list[int]:
    """Send `requests` (method, path, body, headers) on ONE connection; the statuses. A server that
    drops the connection without ``Connection: close`` makes the next request fail here."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.auto_open = 0  # never reconnect silently
    conn.connect()
    statuses = []
    try:
        for method, path, body, headers in requests:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
            assert (resp.getheader("connection") or "").lower() != "close", (path, resp.status)
    finally:
        conn.close()
    return statuses


def test_keep_alive_connection_survives_client_errors(server):
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    good = json.dumps({"instances": [{"audio": b64(wav_bytes())}]}).encode()
    loud = json.dumps({"instances": [{"audio": b64(loud_wav())}]}).encode()
    js = {"content-type": "application/json"}
    statuses = _same_connection_sequence(host, int(port), [
        ("POST", V1, loud, js), ("POST", V1, good, js), ("GET", "/v2/models/nope", None, {}),
        ("DELETE", V2, None, {}), ("POST", V2, b'{"inputs": 5}', js), ("POST", V1, b"{not json", js),
        ("POST", V1, good, js)])
    assert statuses == [400, 200, 404, 405, 400, 400, 200]


def test_an_unhandled_exception_is_a_complete_500_and_the_connection_lives():
    """The mechanism behind it, with a route that raises (no client input can make ours raise)."""
    import uvicorn
    from fastapi import FastAPI

    from emoflow.serving.oip import ProtocolMiddleware

    app = FastAPI()

    @app.get("/boom")
    async def boom():
        raise RuntimeError("internal detail " + MARKER)

    @app.get("/fine")
    async def fine():
        return {"ok": True}

    app.add_middleware(ProtocolMiddleware)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.auto_open = 0
        conn.connect()
        conn.request("GET", "/boom")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 500 and MARKER not in body.decode() and json.loads(body)["error"]
        conn.request("GET", "/fine")  # same socket: must still be open
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == {"ok": True}
        conn.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_validation_errors_are_422_error_objects_without_the_input():
    """FastAPI's 422 for a typed body echoes the input; ours names the field only."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from pydantic import BaseModel

    from emoflow.serving.oip import add_exception_handlers

    class Body(BaseModel):
        count: int

    app = FastAPI()

    @app.post("/typed")
    async def typed(body: Body):
        return {"count": body.count}

    add_exception_handlers(app)
    r = TestClient(app).post("/typed", json={"count": MARKER * 1000})
    assert r.status_code == 422
    assert set(r.json()) == {"error"} and "count" in r.json()["error"]
    assert MARKER not in r.text and len(r.content) < 4096


def test_non_finite_outputs_refuse_only_their_request_in_process(tmp_path, monkeypatch):
    from emoflow.monitoring.metrics import PredictionMetrics
    from emoflow.serving.predictor import EmotionPredictor
    from emoflow.serving.protocol import BadRequest
    from emoflow.serving.settings import ServingConfig
    from prometheus_client import CollectorRegistry

    store = register_tiny_model(tmp_path)
    registry = CollectorRegistry()
    p = EmotionPredictor("emoflow", "registry://emoflow@production", store=store,
                         config=ServingConfig(model_workers=1, prep_threads=1), metrics=PredictionMetrics(registry))
    p.load()
    forward = p.runner.model.forward

    def nan_in_the_last_row(batch, mode="both"):  # of batches of two or more
        out = forward(batch, mode=mode)
        if len(out["logits"]) > 1:
            out["logits"][-1] = float("nan")
        return out

    monkeypatch.setattr(p.runner.model, "forward", nan_in_the_last_row)
    body = {"instances": [{"audio": b64(wav_bytes()), "text": "fine"}, {"audio": b64(wav_bytes()), "text": "fine too"}]}
    with pytest.raises(BadRequest, match=r"instances\[1\]: .*outputs .*not finite"):
        asyncio.run(p.predict(body))
    total = sum(s.value for m in registry.collect() if m.name == "emoflow_predictions" for s in m.samples
                if s.name == "emoflow_predictions_total")
    assert total == 0
    assert len(asyncio.run(p.predict({"instances": body["instances"][:1]}))["predictions"]) == 1
    p._prep_pool.shutdown()
    p._model_pool.shutdown()


# -- item 5: content types and encodings ----------------------------------------------------------------

@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "application/json; charset=utf-8",
                                   "Application/JSON", "text/plain"])
@pytest.mark.parametrize("path", [V1, V2])
def test_a_json_body_is_json_whatever_the_content_type(server, path, ctype):
    url, _ = server
    audio = b64(wav_bytes(seconds=0.5))
    body = {"instances": [{"audio": audio}]} if path == V1 else \
        {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [audio]}]}
    headers = {"content-type": ctype} if ctype else {}
    r = httpx.post(f"{url}{path}", content=json.dumps(body).encode(), headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def test_binary_extension_on_v1_says_it_is_for_v2(server):
    url, _ = server
    body, headers = binary_v2(wav_bytes())
    r = httpx.post(f"{url}{V1}", content=body, headers=headers, timeout=30)
    assert r.status_code == 400 and "v2 /infer only" in r.json()["error"]


def test_the_readme_curl_command_works(server, tmp_path):
    url, _ = server
    (tmp_path / "clip.wav").write_bytes(wav_bytes(seconds=1.0))
    readme_line = ("curl -s localhost:8080/v1/models/emoflow:predict -d '{\"instances\": [{\"audio\": \""
                   "'$(base64 -w0 clip.wav)'\", \"text\": \"optional transcript\"}]}'")
    command = readme_line.replace("localhost:8080", url.removeprefix("http://"))
    out = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "200", body
    assert json.loads(body)["predictions"][0]["label"] in LABELS


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("GZip, identity", gzip.compress)],
    ids=["gzip", "deflate", "gzip-identity"])
def test_compressed_bodies_are_decompressed(server, encoding, compress):
    url, _ = server
    body = json.dumps({"instances": [{"audio": b64(wav_bytes())}]}).encode()
    r = httpx.post(f"{url}{V1}", content=compress(body), timeout=30,
                   headers={"content-type": "application/json", "content-encoding": encoding})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("encoding, body, status, words", [
    ("br", b"\x8b\x02\x80{}\x03", 415, "'br' is not supported"),
    ("zstd", b"(\xb5/\xfd", 415, "'zstd'"),
    ("gzip", gzip.compress(b"{" + b" " * 20_000_000 + b"}"), 413, "decompresses to more than"),  # 20 MB bomb
    ("gzip", gzip.compress(b'{"instances": []}')[:-12], 400, "not valid gzip"),
    ("deflate", b"not deflate at all", 400, "not valid deflate"),
], ids=["br", "zstd", "gzip-bomb", "gzip-truncated", "deflate-garbage"])
def test_unsupported_or_bad_encodings_are_named(server, encoding, body, status, words):
    url, _ = server
    r = httpx.post(f"{url}{V1}", content=body, headers={"content-type": "application/json",
                                                          "content-encoding": encoding}, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
