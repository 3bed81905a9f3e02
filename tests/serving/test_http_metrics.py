"""emoflow_http_responses_total{route, code_class}: every HTTP response is counted at the HTTP
layer, by route template and status class — KServe-level 400s, 404, 405, 413, 422, 5xx included
(issue 15 item 4: the error-ratio alert was blind to everything but errors inside the predictor)."""

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from starlette.testclient import TestClient

from emoflow.serving.edge import ResponseMetrics, route_template
from emoflow.serving.local import start_local_server, stop_local_server
from serving.serving_helpers import b64, free_port, register_tiny_model, wav_bytes

INFER = "/v2/models/{model_name}/infer"
PREDICT = "/v1/models/{model_name}:predict"


def responses(text: str) -> dict[tuple[str, str], float]:
    """{(route, code_class): count} from a /metrics exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "emoflow_http_responses":
            for s in family.samples:
                if s.name == "emoflow_http_responses_total":
                    out[(s.labels["route"], s.labels["code_class"])] = s.value
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = register_tiny_model(tmp_path_factory.mktemp("http-metrics"))
    port = free_port()
    url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port,
                             extra_args=["--max_request_bytes", "100000"])
    yield url
    stop_local_server(port)


@pytest.mark.slow
def test_every_kind_of_response_is_counted_by_route_and_class(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        before = responses(c.get("/metrics").text)
        sent = [
            (c.post("/v1/models/emoflow:predict", json={"instances": [{"audio": b64(wav_bytes())}]}), PREDICT, "2xx"),
            (c.post("/v1/models/emoflow:predict", content=b"{not json"), PREDICT, "4xx"),          # KServe 400
            (c.post("/v2/models/emoflow/infer", json={"inputs": 5}), INFER, "4xx"),                  # 400
            (c.get("/no/such/path"), "other", "4xx"),                                                # 404
            (c.get("/v2/models/emoflow/infer"), INFER, "4xx"),                                       # 405
            (c.post("/v1/models/emoflow:predict", content=b"x" * 200_000), PREDICT, "4xx"),         # 413
            (c.post("/v1/models/emoflow:explain", json={"instances": [1]}), "/v1/models/{model_name}:explain",
             "5xx"),                                                                                 # 501
        ]
        after = responses(c.get("/metrics").text)
    assert [r.status_code for r, *_ in sent] == [200, 400, 400, 404, 405, 413, 501]
    expected: dict = {}
    for _, route, cls in sent:
        expected[(route, cls)] = expected.get((route, cls), 0) + 1
    for key, n in expected.items():
        assert after.get(key, 0) - before.get(key, 0) == n, (key, before, after)
    # label values are route templates, never the raw paths a client sent
    assert not any("/no/such/path" in route or route.endswith("/emoflow/infer") for route, _ in after)


class Body(BaseModel):
    n: int


def test_422_500_and_unanswered_requests_are_counted():
    """Validation errors (422) and unhandled exceptions (500, answered by Starlette outside the
    middleware, or nothing answered at all) are counted as well: an in-process app."""
    app = FastAPI()

    @app.post("/things/{thing_id}")
    async def typed(thing_id: int, body: Body):
        return {"n": body.n}

    @app.get("/boom")
    async def boom():
        raise RuntimeError("bug")

    app.add_middleware(ResponseMetrics)
    from emoflow.serving.edge import HTTP_RESPONSES

    def count(route, cls):
        return HTTP_RESPONSES.labels(route, cls)._value.get()

    before = {k: count(*k) for k in [("/things/{thing_id}", "4xx"), ("/things/{thing_id}", "2xx"), ("/boom", "5xx")]}
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/things/1", json={"n": "not a number"}).status_code == 422
    assert client.post("/things/x", json={"n": 1}).status_code == 422
    assert client.post("/things/1", json={"n": 1}).status_code == 200
    assert client.get("/boom").status_code == 500
    assert count("/things/{thing_id}", "4xx") - before[("/things/{thing_id}", "4xx")] == 2
    assert count("/things/{thing_id}", "2xx") - before[("/things/{thing_id}", "2xx")] == 1
    assert count("/boom", "5xx") - before[("/boom", "5xx")] == 1


def test_route_template_of_a_method_mismatch_and_of_unknown_paths():
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str):
        return {}

    base = {"type": "http", "root_path": "", "app": app, "query_string": b"", "headers": []}
    assert route_template({**base, "method": "GET", "path": "/v2/models/m/infer"}) == INFER
    assert route_template({**base, "method": "POST", "path": "/v2/models/m/infer"}) == INFER
    assert route_template({**base, "method": "GET", "path": "/x" * 50}) == "other"
