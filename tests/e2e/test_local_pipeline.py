"""The whole DAG under kfp.local on a tiny synthetic corpus, ending with a served prediction."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from emoflow.registry import Registry
from emoflow.storage import open_store
from serving.serving_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_emoflow_run_whole_dag(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "assets").symlink_to(Path(os.environ["EMOFLOW_HOME"]) / "assets")
    config = tmp_path / "run.yaml"
    config.write_text(
        "corpus: demo\n"
        "epochs: 1\n"
        "ingest_options: {demo: {sessions: 3, speakers_per_session: 1, utterances_per_speaker: 8}}\n"
    )
    port = free_port()
    env = dict(os.environ, EMOFLOW_HOME=str(home), EMOFLOW_STORE="")
    env.pop("EMOFLOW_STORE")
    # the demo config, then this test's (later layers win)
    cmd = [sys.executable, "-m", "emoflow.cli", "run", "--config", "demo", "--config", str(config), "--port", str(port)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        # every step ran, in order
        for step in ("ingest", "transcribe", "features", "train", "evaluate", "register", "deploy"):
            assert f"Task \x1b[96m'{step}'\x1b[0m finished with status \x1b[92mSUCCESS" in out, step
        assert "Winner: a1" in out
        assert "fold1-S1" in out and "pooled" in out
        assert "Served prediction" in out
        last = json.loads((home / "last_run.json").read_text())
        assert last["version"] == "v1" and last["promoted"] is True
        registry = Registry(open_store(str(home / "store")))
        assert registry.resolve("emoflow@production") == ("emoflow", "v1")
        files = set(registry.manifest("emoflow", "v1")["files"])
        assert {"model/model.safetensors", "reference_distribution.json", "model_card.md"} <= files
        # the endpoint is still up after the pipeline and answers V1 and v2
        url = f"http://127.0.0.1:{port}"
        wav = next((home / "demo").rglob("*.wav")).read_bytes()
        r = httpx.post(f"{url}/v2/models/emoflow/infer", timeout=30, json={"inputs": [
            {"name": "audio", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(wav).decode()]}]})
        assert r.status_code == 200, r.text
    finally:
        subprocess.run([sys.executable, "-m", "emoflow.cli", "serve", "--stop", "--port", str(port)],
                       cwd=REPO, env=env, capture_output=True, timeout=60)
