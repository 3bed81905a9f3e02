"""R2 in CI: ~100 seeded malformed requests over real HTTP get 4xx answers, never a 5xx, and the
server stays ready (the full run is benchmarks/bench_fuzz.py)."""

import os
import threading
from collections import Counter

import httpx
import pytest

from benchmarks.bench_fuzz import MAY_DECODE, make_cases, protocol_cases, run_fuzz, run_protocol_cases
from emoflow.config import home
from emoflow.serving.local import start_local_server, stop_local_server
from serving.serving_helpers import b64, free_port, register_tiny_model, wav_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = register_tiny_model(tmp_path_factory.mktemp("fuzz"))
    port = free_port()
    url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port,
                             extra_args=["--max_request_bytes", "300000", "--max_audio_seconds", "10"])
    pid = int((home() / "serve" / f"{port}.pid").read_text())
    threading.Thread(target=lambda: _waitpid(pid), daemon=True).start()  # stop returns at once
    yield url
    stop_local_server(port)


def _waitpid(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def test_generator_is_seeded_and_varied():
    a, b = make_cases(100, seed=3), make_cases(100, seed=3)
    assert [c[2] for c in a] == [c[2] for c in b]
    assert len({name for name, *_ in a}) >= 20  # many kinds of malformed request
    assert {path for _, path, *_ in a} >= {"/v1/models/emoflow:predict", "/v2/models/emoflow/infer"}


def test_fuzz_only_client_errors_and_still_ready(server):
    cases = make_cases(100, seed=1)
    result = run_fuzz(server, cases, concurrency=4)
    assert result["failures"] == []
    assert not any(s is None or s >= 500 for s in result["statuses"])
    repaired = Counter(name for name, *_ in cases if name.endswith(MAY_DECODE))
    assert result["statuses"].get(200, 0) <= sum(repaired.values())
    assert result["ready_after"] == 200 and result["valid_after"] == 200


def test_protocol_cases_of_issue_15_answer_as_expected(server):
    """bench_fuzz's protocol cases: expected statuses, no 5xx, error bodies <= 4 KB without echo."""
    result = run_protocol_cases(server, protocol_cases())
    assert result["failures"] == [] and result["5xx"] == 0
    assert len(result["kinds"]) >= 30


@pytest.mark.parametrize("body, status, words", [
    # huge declared v2 shape: named, not allocated
    ({"inputs": [{"name": "audio", "shape": [10**12], "datatype": "BYTES", "data": ["AAAA"]}]}, 400, "shape"),
    ({"inputs": [{"name": "audio", "shape": [-1], "datatype": "BYTES", "data": ["AAAA"]}]}, 400, "non-negative"),
    ({"inputs": [{"name": "audio", "shape": [2, 1], "datatype": "BYTES", "data": [["AAAA"], ["BB"]]},
                 {"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, 400, "duplicate"),
    ({"inputs": [{"name": "audio", "shape": [2], "datatype": "BYTES", "data": [["AAAA"], ["BB", "CC"]]}]}, 400,
     "rows of equal length"),
    ({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [5]}]}, 400, "must be strings"),
])
def test_v2_malformed_shapes_are_named(server, body, status, words):
    r = httpx.post(f"{server}/v2/models/emoflow/infer", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.text


def test_lone_surrogate_in_text_is_a_400(server):
    body = '{"instances": [{"audio": "%s", "text": "bad \\ud800 text"}]}' % b64(wav_bytes(0.5))
    r = httpx.post(f"{server}/v1/models/emoflow:predict", content=body.encode(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert "surrogate" in r.text  # the JSON decoder names it; the predictor checks again after decoding


def test_binary_extension_with_a_lying_header_length_is_a_400(server):
    header = b'{"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}'
    r = httpx.post(f"{server}/v2/models/emoflow/infer", content=header + b"\xff\xff\xff\x7f1234",
                   headers={"content-type": "application/octet-stream",
                            "inference-header-content-length": str(len(header))}, timeout=30)
    assert r.status_code == 400, r.text


def test_body_over_the_limit_is_413_naming_it(server):
    # 300000 audio bytes allowed -> body limit 300000 * 4/3 + 64 KiB = 465536 bytes
    body = b'{"instances": [{"audio": "' + b"A" * 500_000 + b'"}]}'
    r = httpx.post(f"{server}/v1/models/emoflow:predict", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert "465536" in r.text and "max_request_bytes=300000" in r.text


def test_compressed_audio_declaring_more_than_the_limit_is_refused_from_its_header(server):
    flac = wav_bytes(seconds=12.0, fmt="FLAC")  # 12 s > 10 s limit, small on the wire
    r = httpx.post(f"{server}/v1/models/emoflow:predict", json={"instances": [{"audio": b64(flac)}]}, timeout=30)
    assert r.status_code == 400 and "limit is 10" in r.text
