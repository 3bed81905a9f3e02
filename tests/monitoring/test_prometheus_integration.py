"""The real Prometheus server (Debian package) on 127.0.0.1 scraping a real metrics endpoint.

Prometheus (1 s scrape and rule evaluation) runs the production rules rendered with seconds-long
windows (`rules.rule_groups(drift_window="20s", ...)`, the predictor's in-process window set to the
same 20 s); a stationary then a shifted stream of predictions is sent, and the test reads the
recording rules and the EmotionDistributionDrift alert going pending then firing through
Prometheus' HTTP API. Two targets:

- test_real_predictor: the emoflow KServe predictor (`python -m emoflow.serving.predictor`) over
  HTTP, serving a tiny A1 model whose classifier is rescaled so that two known sentences give
  "neutral" and "happy" (random weights alone give near-constant outputs);
- test_metrics_endpoint: PredictionMetrics served by prometheus_client, fed directly (no model),
  with exact shares (PSI 0 stationary, 0.1796 shifted); the in-process gauges, scraped, agree with
  the recording rules (the same formulas, emoflow.monitoring.drift); stopping the endpoint raises
  PredictorMetricsAbsent.
"""

import base64
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from emoflow.monitoring import drift, rules
from emoflow.monitoring.metrics import PredictionMetrics

pytestmark = pytest.mark.slow

WINDOW = "20s"
TEST_RULES = dict(drift_window=WINDOW, drift_for="2s", share_for="2s", absent_for="3s", interval="1s")
SERIES = rules.drift_series(WINDOW)
PSI, ZSCORE = SERIES["psi"], SERIES["g_zscore"]


def binary(name):
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} not found: CI must install the Debian package `prometheus`")
        pytest.skip(f"{name} not installed (apt-get install -y prometheus)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout, proc=None, log=None):
    deadline = time.time() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}):\n{Path(log).read_text()[-3000:] if log else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, f"{url} not ready after {timeout} s"
        time.sleep(0.2)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def start_prometheus(tmp_path):
    procs = []

    def start(target_port):
        (tmp_path / "rules.yml").write_text(rules.render_rules_file(**TEST_RULES))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [{"job_name": "emoflow-predictor",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"], "labels": {"pod": "p0"}}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = tmp_path / "prometheus.log"
        proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/-/ready", 30, proc, log)
        return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    yield start
    for proc in procs:
        stop(proc)


class Stream:
    """Calls send(batch) in a loop from the current sequence of batches until stopped."""

    def __init__(self, send, batches, period_s):
        self.send, self.batches, self.period = send, batches, period_s
        self.stopped, self.errors = threading.Event(), []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i, nxt = 0, time.perf_counter()
        while not self.stopped.is_set():
            batches = self.batches
            try:
                self.send(batches[i % len(batches)])
            except Exception as exc:  # reported by the test
                self.errors.append(repr(exc))
            i += 1
            nxt += self.period
            time.sleep(max(0.0, nxt - time.perf_counter()))

    def stop(self):
        self.stopped.set()
        self.thread.join(timeout=30)


def query(api, expr):
    r = api.get("/api/v1/query", params={"query": expr})
    r.raise_for_status()
    return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
            for s in r.json()["data"]["result"]}


def alert_state(api, name="EmotionDistributionDrift"):
    alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
    states = {a["state"] for a in alerts if a["labels"]["alertname"] == name}
    return "firing" if "firing" in states else ("pending" if "pending" in states else None)


def check_stationary_then_shift(api, stream, shifted_batches, model="emo", version="v1", max_stationary=0.03):
    """Stationary PSI small and no alert; after the shift the alert goes pending then firing."""
    key = (("model", model), ("version", version))
    deadline = time.time() + 60
    while not query(api, ZSCORE):  # recorded once the window holds enough predictions
        assert not stream.errors, stream.errors[:3]
        assert time.time() < deadline, "no G-test score recorded from the stationary stream"
        time.sleep(0.5)
    time.sleep(2)
    stationary = []
    for _ in range(8):
        stationary.append(query(api, PSI)[key])
        assert alert_state(api) is None
        time.sleep(0.5)
    assert max(stationary) < max_stationary, stationary
    stream.batches = shifted_batches
    t0, seen, deadline = time.time(), [], time.time() + 60
    while time.time() < deadline:
        state = alert_state(api)
        if state and (not seen or seen[-1] != state):
            seen.append(state)
        if state == "firing":
            break
        time.sleep(0.2)
    assert not stream.errors, stream.errors[:3]
    assert seen == ["pending", "firing"], seen
    shifted = query(api, PSI)[key]
    assert shifted > rules.DEFAULTS["psi_threshold"] and query(api, ZSCORE)[key] > rules.DEFAULTS["zscore_threshold"], shifted
    return max(stationary), shifted, time.time() - t0


def assert_gauges_match_rules(api):
    """One definition: each in-process gauge (one replica, scraped) agrees with its recording rule;
    exactly on equal counts (test_monitoring_rules), here within the scrape/evaluation offsets and
    increase()'s extrapolation to the window edges (G scales with the count, hence 10 %)."""
    for stat in drift.STATISTICS:
        gauge = query(api, f"emoflow_drift_{stat.name}")
        rule = query(api, SERIES[stat.name])
        gauge = {tuple(kv for kv in k if kv[0] in ("model", "version", "emotion")): v for k, v in gauge.items()}
        assert gauge.keys() == rule.keys() and rule, (stat.name, gauge, rule)
        for k in rule:
            tol = 0.1 * abs(rule[k]) if stat.name in ("g", "g_zscore") else 0.03
            assert gauge[k] == pytest.approx(rule[k], abs=max(tol, 1e-6)), (stat.name, k, gauge[k], rule[k])
        if not stat.per_emotion:
            print(f"\n{stat.name}: in-process gauge {list(gauge.values())[0]:.4f}, recording rule {list(rule.values())[0]:.4f}")


# ---------------------------------------------------------------------------------------------
# the emoflow KServe predictor
# ---------------------------------------------------------------------------------------------

SENTENCES = [f"{w} is what I feel about the {t}" for w in
             ("joy", "anger", "sadness", "calm", "fear", "love", "boredom", "surprise", "hope", "disgust")
             for t in ("weather", "meeting", "news", "party", "trip")]


def wav_b64(seconds=1.0, sr=16000):
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def build_steerable_model(folder: Path, audio_b64: str) -> tuple[str, str]:
    """Save a tiny A1 model for labels (neutral, happy) whose classifier is rescaled so that one
    sentence gives neutral and another happy with high confidence; return (neutral_text, happy_text)."""
    import torch

    from emoflow.models import build_model, load_preset, save_model
    from emoflow.serving.predictor import EmotionPredictor

    torch.manual_seed(0)
    preset = load_preset("a1", "tiny")
    # the tiny preset's text output is one value per class through a ReLU, which at random init
    # leaves the sentences' outputs equal to float precision: a 16-wide text output (as A1 had
    # before its paper preset mapped it to the classes) gives them different outputs to steer by
    preset["model"]["text"]["out_dim"] = 16
    preset["model"]["speech"]["parallel_bn"] = False
    save_model(build_model("a1", preset, ["neutral", "happy"]), folder / "model")
    (folder / "manifest.json").write_text(json.dumps({"version": "v1"}))
    (folder / "reference_distribution.json").write_text(json.dumps({"neutral": 0.5, "happy": 0.5}))
    pred = EmotionPredictor("emo", str(folder))
    pred.load()
    results = pred.runner.run_batch(pred.parse({"instances": [{"audio": audio_b64, "text": s} for s in SENTENCES]})[0])
    diff = [math.log(r["probabilities"]["neutral"] / r["probabilities"]["happy"]) for r in results]
    lo, hi = int(np.argmin(diff)), int(np.argmax(diff))
    assert diff[hi] - diff[lo] > 1e-5, "sentences do not change the random model's output"
    mid, k = (diff[hi] + diff[lo]) / 2, 8.0 / (diff[hi] - diff[lo])  # rescaled log-odds: ±4
    with torch.no_grad():
        cls = pred.runner.model.classifier
        cls.weight.mul_(k)
        cls.bias.mul_(k)
        cls.bias[0] -= k * mid / 2
        cls.bias[1] += k * mid / 2
    save_model(pred.runner.model, folder / "model")
    return SENTENCES[hi], SENTENCES[lo]


def test_real_predictor(tmp_path, start_prometheus):
    audio = wav_b64()
    neutral_text, happy_text = build_steerable_model(tmp_path / "emo", audio)
    port = free_port()
    log = tmp_path / "predictor.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", EMOFLOW_DRIFT_WINDOW=WINDOW)
    proc = subprocess.Popen(
        [sys.executable, "-m", "emoflow.serving.predictor", "--model_name", "emo", "--storage_uri",
         str(tmp_path / "emo"), "--host", "127.0.0.1", "--http_port", str(port)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    stream = None
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/models/emo/ready", 90, proc, log)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def send(texts):
            r = client.post("/v1/models/emo:predict", json={"instances": [{"audio": audio, "text": t} for t in texts]})
            assert r.status_code == 200, r.text
            got = [p["label"] for p in r.json()["predictions"]]
            want = ["neutral" if t == neutral_text else "happy" for t in texts]
            assert got == want, (got, want)

        send([neutral_text, happy_text])  # the model steers as built
        api = start_prometheus(port)
        stationary = [[neutral_text, happy_text] * 4]                 # shares 0.5 / 0.5 = reference
        shifted = [[neutral_text] * 6 + [happy_text] * 2]             # 0.75 / 0.25: PSI 0.275
        stream = Stream(send, stationary, period_s=0.1)
        s_psi, first_psi, delay = check_stationary_then_shift(api, stream, shifted)
        time.sleep(rules.duration_seconds(WINDOW) + 2)  # both windows now hold the shifted stream only
        psi = query(api, PSI)[(("model", "emo"), ("version", "v1"))]
        assert psi == pytest.approx(0.25 * math.log(1.5) + 0.25 * math.log(2), abs=0.06)
        assert_gauges_match_rules(api)
        # KServe's latency histogram and our error counter are scraped from the same endpoint
        assert query(api, 'emoflow:request_predict_seconds:p99_rate5m{model_name="emo"}')
        r = client.post("/v1/models/emo:predict", json={"instances": [{"audio": "not base64!"}]})
        assert 400 <= r.status_code < 500
        metrics = client.get("/metrics").text
        assert 'emoflow_request_errors_total{model="emo"' in metrics
        assert 'emoflow_drift_g_zscore{model="emo",version="v1"}' in metrics
        print(f"\nreal predictor: stationary PSI max {s_psi:.4f}; PSI {first_psi:.4f} when firing "
              f"{delay:.1f} s after the shift, {psi:.4f} a window later")
    finally:
        if stream is not None:
            stream.stop()
        stop(proc)


# ---------------------------------------------------------------------------------------------
# PredictionMetrics endpoint (no model): exact shares
# ---------------------------------------------------------------------------------------------

def test_metrics_endpoint(start_prometheus):
    reg = CollectorRegistry()
    metrics = PredictionMetrics(reg, window=WINDOW)
    metrics.set_reference("emo", "v1", {"neutral": 0.25, "happy": 0.25, "sad": 0.25, "angry": 0.25})
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    api = start_prometheus(port)

    def send(labels):
        for lab in labels:
            metrics.observe("emo", "v1", lab, 0.8, "audio+text")

    # 60 predictions: neutral 27 (0.45), the others 11 each (0.1833) -> PSI 0.1796
    shifted = ["neutral"] * 27 + ["happy"] * 11 + ["sad"] * 11 + ["angry"] * 11
    shifted = [shifted[(i * 7) % 60] for i in range(60)]  # interleaved (7 is coprime with 60)
    stream = Stream(send, [["neutral", "happy", "sad", "angry"]], period_s=0.04)
    try:
        s_psi, psi, delay = check_stationary_then_shift(api, stream, [shifted[i:i + 4] for i in range(0, 60, 4)],
                                                        max_stationary=0.01)
        time.sleep(rules.duration_seconds(WINDOW) + 2)  # both windows now hold the shifted stream only
        stream.stop()
        time.sleep(2.5)  # two more scrapes and evaluations of the final counts
        shares = query(api, SERIES["share"])
        assert shares[(("emotion", "neutral"), ("model", "emo"), ("version", "v1"))] == pytest.approx(0.45, abs=0.03)
        assert query(api, PSI)[(("model", "emo"), ("version", "v1"))] == pytest.approx(0.1796, abs=0.03)
        assert_gauges_match_rules(api)
        print(f"\nmetrics endpoint: stationary PSI max {s_psi:.4f}; shifted PSI {psi:.4f}; firing {delay:.1f} s after the shift")
        # issue 14 item 5: the target goes away -> PredictorMetricsAbsent
        assert alert_state(api, "PredictorMetricsAbsent") is None
        server.shutdown()
        server.server_close()
        deadline = time.time() + 60
        while alert_state(api, "PredictorMetricsAbsent") != "firing":
            assert time.time() < deadline, "PredictorMetricsAbsent did not fire after the target went away"
            time.sleep(0.5)
        reasons = {a["labels"]["reason"] for a in api.get("/api/v1/alerts").json()["data"]["alerts"]
                   if a["labels"]["alertname"] == "PredictorMetricsAbsent" and a["state"] == "firing"}
        assert "no_target_up" in reasons, reasons
    finally:
        stream.stop()
        server.shutdown()
