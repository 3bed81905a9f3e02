"""Issue 14 item 7, done-when: a second identical `emoflow run` (kfp.local, demo config) does no
encoder forward pass and no training epoch — counted by the tasks and printed by the run — and
still registers and serves."""

import base64
import json
import os
import re
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
WORK = re.compile(r"pipeline finished in \d+ s; work done: (\d+) encoder passes, (\d+) training epochs(?: \(([^)]*)\))?; reused: (.*)")
# the demo's features plus a small frozen speech encoder (random init, no assets), so the run has
# encoder passes to count
CONFIG = """\
corpus: demo
epochs: 1
ingest_options: {demo: {sessions: 3, speakers_per_session: 1, utterances_per_speaker: 8}}
feature_config:
  n_mels: 128
  win_ms: 25
  hop_ms: 10
  sample_rate: 16000
  normalize: segment
  encoders:
    - source: wav2vec2
      init: random
      config: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64,
               conv_dim: [16, 16, 16], conv_kernel: [10, 3, 3], conv_stride: [5, 4, 4],
               num_conv_pos_embeddings: 16, num_conv_pos_embedding_groups: 2, mask_time_prob: 0.0,
               layerdrop: 0.0, feat_extract_norm: layer, do_stable_layer_norm: true}
"""


def test_second_identical_run_reuses_everything_and_still_registers_and_serves(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "assets").symlink_to(Path(os.environ["EMOFLOW_HOME"]) / "assets")
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "EMOFLOW_STORE"}
    env["EMOFLOW_HOME"] = str(home)
    # the demo config, then this test's (later layers win)
    cmd = [sys.executable, "-m", "emoflow.cli", "run", "--config", "demo", "--config", str(config), "--port", str(port)]
    registry = Registry(open_store(str(home / "store")))
    try:
        counts = []
        for run in (1, 2):
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, out[-6000:]
            found = WORK.findall(proc.stdout)
            assert len(found) == 1, proc.stdout[-3000:]
            counts.append(found[0])
            assert "Served prediction" in out
            last = json.loads((home / "last_run.json").read_text())
            assert last["version"] == f"v{run}" and last["promoted"] is True
        (passes1, epochs1, _, _), (passes2, epochs2, other2, reused2) = counts
        assert int(passes1) == 24 and int(epochs1) > 0  # 24 utterances through the encoder, 3 folds + final
        assert (passes2, epochs2, other2) == ("0", "0", "")  # no log-mel, no ASR either
        assert "folds 3" in reused2 and "final_fits 1" in reused2 and "embeddings 24" in reused2

        # registered as v2 and now production, with the same weights as v1
        assert registry.resolve("emoflow@production") == ("emoflow", "v2")
        weights = [open_store(str(home / "store")).get_bytes(f"registry/emoflow/{v}/model/model.safetensors")
                   for v in ("v1", "v2")]
        assert weights[0] == weights[1]
        # and served: the endpoint answers with v2
        wav = next((home / "demo").rglob("*.wav")).read_bytes()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/emoflow:predict", timeout=30,
                       json={"instances": [{"audio": base64.b64encode(wav).decode(), "text": "hello"}]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["version"] == "v2"
    finally:
        subprocess.run([sys.executable, "-m", "emoflow.cli", "serve", "--stop", "--port", str(port)],
                       cwd=REPO, env=env, capture_output=True, timeout=60)
