"""Bounded memory and slow clients (issue 15 items 1 and 7), by counting, never by timing:

- one request's decoded audio is bounded (the total from the headers, before decoding);
- memory in flight across requests is admitted against a budget: over it, 503 + Retry-After
  (bytes admitted and refused counted), and /v2/health/ready answers 503 while it is full;
- request headers and bodies that do not arrive in time get 408 and the connection is closed.
"""

import asyncio
import io
import json
import socket
import threading

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from emoflow.serving.admission import BODY_COPIES, Hold, MemoryBudget, Overloaded, TooLarge
from emoflow.serving.edge import RequestGuard, ResponseMetrics, header_deadline_protocol
from emoflow.serving.local import start_local_server, stop_local_server
from serving.serving_helpers import b64, free_port, register_tiny_model, wav_bytes


def ogg_bytes(seconds: float, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = register_tiny_model(tmp_path_factory.mktemp("limits"))
    port = free_port()
    url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port, extra_args=[
        "--max_request_audio_seconds", "60", "--body_timeout_s", "1", "--header_timeout_s", "1"])
    yield url
    stop_local_server(port)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: a server that
    never closes fails the test instead of hanging it)."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@pytest.mark.slow
def test_total_audio_of_a_request_is_bounded_before_decoding(server):
    """Four 29.9 s OGG clips (each within the per-clip limit) make 119.6 s, over the per-request 60 s:
    400 naming the total, decided from the headers (nothing decoded: no audio admitted)."""
    clip = b64(ogg_bytes(29.9))
    with httpx.Client(base_url=server, timeout=60) as c:
        before = c.get("/metrics").text
        r = c.post("/v1/models/emoflow:predict", json={"instances": [{"audio": clip}] * 4})
        after = c.get("/metrics").text
        assert r.status_code == 400, r.text
        assert "119.6 s of audio" in r.json()["error"] and "60 s per request" in r.json()["error"]
        assert len(r.content) < 1024
        too_large = "emoflow_admission_total"
        assert metric(after, too_large, stage="audio", outcome="too_large") - \
            metric(before, too_large, stage="audio", outcome="too_large") == 1
        assert metric(after, too_large, stage="audio", outcome="admitted") == \
            metric(before, too_large, stage="audio", outcome="admitted")
        assert metric(after, "emoflow_memory_in_flight_bytes") == 0
        two = c.post("/v1/models/emoflow:predict", json={"instances": [{"audio": clip}] * 2})
        assert two.status_code == 200, two.text


@pytest.mark.slow
def test_sixteen_connections_stalled_mid_body_get_408_and_are_closed(server):
    host, port = server.removeprefix("http://").split(":")
    body = json.dumps({"instances": [{"audio": b64(wav_bytes())}]}).encode()
    socks = []
    for _ in range(16):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"POST /v1/models/emoflow:predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % len(body) + body[:100])
        socks.append(s)
    answers = [read_all(s) for s in socks]  # each returns only once the server closed the connection
    for s in socks:
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0][:200]
    assert all(b"did not arrive within 1 s" in a and b"connection: close" in a.lower() for a in answers)
    # a request whose headers never complete gets 408 and is closed too
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/models/emoflow:predict HTTP/1.1\r\nhost: x\r\ncontent-le")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"headers did not arrive" in answer
    with httpx.Client(base_url=server, timeout=30) as c:  # the server is fine and counted them
        assert c.post("/v1/models/emoflow:predict", content=body).status_code == 200
        text = c.get("/metrics").text
    assert metric(text, "emoflow_http_responses_total", route="/v1/models/{model_name}:predict", code_class="4xx") >= 16


# -- admission, deterministically in process: a real uvicorn server, the guard, a trivial app -------
async def echo(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await JSONResponse({"bytes": len(body)})(scope, receive, send)


@pytest.fixture
def guarded():
    """A uvicorn server on 127.0.0.1 with the edge in front of `echo`; yields (url, budget)."""
    budget = MemoryBudget(BODY_COPIES * 1000, retry_after_s=7)
    app = ResponseMetrics(RequestGuard(echo, limit=5000, budget=budget, body_timeout_s=0))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            http=header_deadline_protocol(AutoHTTPProtocol, 60))
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not srv.started:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        threading.Event().wait(0.02)
    yield url, budget
    srv.should_exit = True
    thread.join(10)


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers, then content-length bytes): the server may send the
    headers and the body in separate segments, so one recv() can return the headers alone."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_bodies_over_the_memory_budget_wait_outside_with_503_and_retry_after(guarded):
    url, budget = guarded
    host, port = url.removeprefix("http://").split(":")
    held = socket.create_connection((host, int(port)), timeout=30)
    held.sendall(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 600\r\n\r\n" + b"a" * 10)  # body pending
    while budget.in_use == 0:  # wait for the server to admit it (a count, not a time)
        threading.Event().wait(0.01)
    assert budget.in_use == BODY_COPIES * 600
    with httpx.Client(base_url=url, timeout=30) as c:
        busy = c.post("/x", content=b"b" * 600)          # 2 x 1800 > 3000 bytes: not now
        assert busy.status_code == 503 and busy.headers["retry-after"] == "7"
        assert busy.headers["connection"] == "close" and "retry in 7 s" in busy.json()["error"]
        small = c.post("/x", content=b"c" * 300)         # 1800 + 900 fits
        assert small.status_code == 200 and small.json() == {"bytes": 300}
        huge = c.post("/x", content=b"d" * 1200)         # 3600 > the whole budget: the client's error
        assert huge.status_code == 413 and "whole memory budget" in huge.json()["error"]
        held.sendall(b"a" * 590)                         # the held body completes: answered, released
        assert b'"bytes":600' in _read_response(held)
        held.close()
        assert budget.in_use == 0
        assert c.post("/x", content=b"b" * 600).status_code == 200
    assert budget.counts == {"admitted": 3, "overloaded": 1, "too_large": 1}
    assert budget.admitted_bytes == BODY_COPIES * (600 + 300 + 600) and budget.peak == BODY_COPIES * 900


def test_budget_accounting_and_readiness_threshold():
    budget = MemoryBudget(1000, retry_after_s=2, min_request_bytes=300)
    a, b = Hold(budget), Hold(budget)
    a.reserve(600, "a", "audio")
    assert not budget.saturated()                 # 600 + a one-clip request (300) fits
    b.reserve(200, "b", "audio")
    assert budget.saturated()                     # 800 + 300 > 1000: readiness says 503
    with pytest.raises(Overloaded) as exc:
        Hold(budget).reserve(300, "c", "audio")
    assert exc.value.retry_after_s == 2
    with pytest.raises(TooLarge):
        Hold(budget).reserve(1001, "d", "audio")
    a.release()
    a.release()                                   # idempotent
    b.release()
    assert budget.in_use == 0 and budget.peak == 800 and not budget.saturated()
    assert budget.counts == {"admitted": 2, "overloaded": 1, "too_large": 1}


def test_readiness_answers_503_while_the_budget_is_full():
    from kserve.model_repository import ModelRepository

    from emoflow.serving.server import ReadinessDataPlane

    class Loaded:
        ready = True

    registry = ModelRepository()
    registry.update_handle = None
    registry.models = {"m": Loaded()}
    plane = ReadinessDataPlane(model_registry=registry)
    plane.budget = MemoryBudget(1000, min_request_bytes=300)
    assert asyncio.run(plane.ready())
    hold = Hold(plane.budget)
    hold.reserve(800, "burst", "audio")
    assert not asyncio.run(plane.ready())
    hold.release()
    assert asyncio.run(plane.ready())
