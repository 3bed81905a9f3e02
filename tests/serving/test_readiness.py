"""Readiness: /v2/health/ready answers 503 until the model is loaded, then 200."""

import asyncio
import threading
import time

import httpx

from emoflow.serving.predictor import EmotionPredictor
from emoflow.serving.server import EmoflowModelServer
from serving.serving_helpers import free_port, register_tiny_model


class SlowPredictor(EmotionPredictor):
    def __init__(self, *args, gate: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate

    def load(self) -> bool:
        self.gate.wait(30)
        return super().load()


def test_ready_only_after_load(tmp_path):
    store = register_tiny_model(tmp_path)
    gate = threading.Event()
    model = SlowPredictor("emoflow", "registry://emoflow@production", store=store, gate=gate)
    port = free_port()
    server = EmoflowModelServer(host="127.0.0.1", http_port=port)
    thread = threading.Thread(target=server.start, args=([model],), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            r = httpx.get(f"{url}/v2/health/ready", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    assert r.status_code == 503
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    early = httpx.post(f"{url}/v1/models/emoflow:predict", json={"instances": []}, timeout=5)
    assert early.status_code == 503
    for path in ("/v2/models/emoflow", "/v2/models/emoflow/versions/v1", "/v2/models/emoflow/versions/v1/ready"):
        r = httpx.get(f"{url}{path}", timeout=5)  # inputs, outputs and version are known once loaded
        assert r.status_code == 503 and "error" in r.json(), (path, r.text)
    gate.set()
    while time.time() < deadline and httpx.get(f"{url}/v2/health/ready", timeout=2).status_code != 200:
        time.sleep(0.1)
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert model.ready
    server.stop_serving()
    thread.join(10)
