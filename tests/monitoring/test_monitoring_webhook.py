"""Retrain webhook over real HTTP on 127.0.0.1 with Alertmanager v4 payloads.

Only the submit function (the kfp.Client call) is replaced; everything else is the real app served
by uvicorn.
"""

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from emoflow.monitoring.webhook import (RetrainTrigger, create_app, kfp_submitter, load_token,
                                        parse_payload, PayloadError)

TOKEN = "s3cret-token-for-tests-0123456789"


def alert(status="firing", model="emo", version="v1", starts="2026-11-23T01:00:00.123456789Z",
          fingerprint=None, alertname="EmotionDistributionDrift"):
    labels = {"alertname": alertname, "model": model, "version": version, "severity": "warning", "team": "emoflow"}
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"Predicted-emotion distribution of {model} {version} drifted from its reference"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-23T02:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=emoflow%3Adrift_psi%3Aratio30m+%3E+0.1",
        "fingerprint": fingerprint or f"{abs(hash((model, version, alertname))) % (1 << 60):016x}",
    }


def payload(*alerts, status=None):
    status = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    first = alerts[0]["labels"]
    return {
        "receiver": "emoflow-retrain",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {"alertname": first["alertname"], "model": first["model"]},
        "commonLabels": {"alertname": first["alertname"], "model": first["model"]},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}/{severity="warning"}:{alertname="%s", model="%s"}' % (first["alertname"], first["model"]),
        "truncatedAlerts": 0,
    }


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


class FakeSubmit:
    def __init__(self):
        self.calls = []
        self.fail = False

    def __call__(self, model, alert):
        if self.fail:
            raise ConnectionError("KFP API unreachable")
        self.calls.append((model, alert["labels"]["version"], alert["startsAt"]))
        return f"run-{len(self.calls)}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def serve():
    servers = []

    def start(app):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 10
        while not server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        servers.append((server, thread))
        return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def setup(serve):
    submit, clock = FakeSubmit(), Clock()
    trigger = RetrainTrigger(submit, cooldown_s=3600, clock=clock)
    client = serve(create_app(trigger, TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    post = lambda body: client.post("/alerts", json=body, headers=auth)
    return submit, clock, client, post


def test_one_run_per_episode(setup):
    submit, clock, client, post = setup
    a1 = alert()
    r = post(payload(a1))
    assert r.status_code == 200 and len(r.json()["submitted"]) == 1
    assert submit.calls == [("emo", "v1", a1["startsAt"])]
    for _ in range(3):  # Alertmanager repeat_interval re-sends the same alert
        clock.t += 600
        r = post(payload(a1))
        assert r.status_code == 200 and r.json()["duplicate"]
    a2 = alert(version="v2", starts="2026-11-23T01:20:00Z")  # canary version drifts too: same episode
    r = post(payload(a1, a2))
    assert r.json()["joined"] and len(submit.calls) == 1
    # both resolve: the episode ends; a late firing copy of a1 does not reopen it
    r = post(payload(alert("resolved", starts=a1["startsAt"]), alert("resolved", version="v2", starts=a2["startsAt"])))
    assert r.status_code == 200 and [x["episode_open"] for x in r.json()["resolved"]] == [True, False]
    assert post(payload(a1)).json()["duplicate"]
    assert len(submit.calls) == 1
    # a new episode inside the cool-down (1 h after the run): recorded, no run
    clock.t += 100
    a3 = alert(starts="2026-11-23T01:50:00Z")
    r = post(payload(a3))
    assert r.json()["cooldown"] and r.json()["cooldown"][0]["last_run"] == "run-1"
    assert len(submit.calls) == 1
    post(payload(alert("resolved", starts=a3["startsAt"])))
    # after the cool-down a new episode starts exactly one more run
    clock.t += 3600
    a4 = alert(starts="2026-11-23T03:10:00Z")
    assert post(payload(a4)).json()["submitted"][0]["run_id"] == "run-2"
    assert post(payload(a4)).json()["duplicate"]
    assert submit.calls[-1] == ("emo", "v1", "2026-11-23T03:10:00Z") and len(submit.calls) == 2


def test_models_have_separate_episodes_and_other_alerts_are_ignored(setup):
    submit, clock, client, post = setup
    post(payload(alert(model="emo")))
    post(payload(alert(model="other")))
    r = post(payload(alert(alertname="PredictorNoTraffic")))
    assert r.status_code == 200 and r.json()["ignored"] == ["PredictorNoTraffic"]
    assert [c[0] for c in submit.calls] == ["emo", "other"]


def test_unauthenticated_and_wrong_token_rejected(setup):
    submit, clock, client, post = setup
    body = payload(alert())
    assert client.post("/alerts", json=body).status_code == 401
    r = client.post("/alerts", json=body, headers={"Authorization": "Bearer wrong-token-wrong-token-123"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/alerts", json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post("/alerts", json=body, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert submit.calls == []
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("mutate, status, message", [
    (lambda b: {**b, "version": "3"}, 400, "version"),
    (lambda b: {**b, "alerts": []}, 400, "alerts must be a non-empty list"),
    (lambda b: {**b, "alerts": [{**b["alerts"][0], "labels": {"model": "emo"}}]}, 400, "alerts[0].labels.alertname"),
    (lambda b: {**b, "alerts": [{**b["alerts"][0], "startsAt": "yesterday"}]}, 400, "alerts[0].startsAt"),
    (lambda b: {**b, "alerts": [{**b["alerts"][0], "status": "pending"}]}, 400, "alerts[0].status"),
    (lambda b: [b], 400, "JSON object"),
])
def test_malformed_payloads_get_400(setup, mutate, status, message):
    submit, clock, client, post = setup
    r = post(mutate(payload(alert())))
    assert r.status_code == status and message in r.json()["error"]
    assert submit.calls == []


def test_not_json_wrong_type_too_large_wrong_method(setup):
    submit, clock, client, post = setup
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/alerts", content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/alerts", content=b"a=b", headers={**auth, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    big = json.dumps(payload(alert())).encode() + b" " * (2 << 20)
    r = client.post("/alerts", content=big, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/alerts", headers=auth).status_code == 405
    assert submit.calls == []


def test_submit_failure_gives_503_then_retry_submits_once(setup):
    submit, clock, client, post = setup
    submit.fail = True
    r = post(payload(alert()))
    assert r.status_code == 503 and "KFP API unreachable" in r.json()["error"]
    submit.fail = False
    assert post(payload(alert())).json()["submitted"]
    assert post(payload(alert())).json()["duplicate"]
    assert len(submit.calls) == 1


def test_state_file_survives_restart(serve, tmp_path):
    state = tmp_path / "state.json"
    submit = FakeSubmit()
    first = RetrainTrigger(submit, state_path=state)
    first.handle(payload(alert()))
    again = RetrainTrigger(submit, state_path=state)
    client = serve(create_app(again, TOKEN))
    r = client.post("/alerts", json=payload(alert()), headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.json()["duplicate"] and len(submit.calls) == 1


def test_parse_payload_accepts_alert_without_fingerprint():
    a = alert()
    del a["fingerprint"]
    parse_payload(payload(a))
    with pytest.raises(PayloadError, match="groupKey"):
        parse_payload({**payload(a), "groupKey": ""})


def test_token_loading(tmp_path, monkeypatch):
    monkeypatch.delenv("EMOFLOW_WEBHOOK_TOKEN", raising=False)
    with pytest.raises(ValueError, match="no webhook token"):
        load_token()
    monkeypatch.setenv("EMOFLOW_WEBHOOK_TOKEN", "short")
    with pytest.raises(ValueError, match="shorter than 16"):
        load_token()
    monkeypatch.setenv("EMOFLOW_WEBHOOK_TOKEN", TOKEN)
    assert load_token() == TOKEN
    f = tmp_path / "tok"
    f.write_text("file-token-0123456789abcdef\n")
    assert load_token(f) == "file-token-0123456789abcdef"
    with pytest.raises(ValueError, match="cannot read webhook token file"):
        load_token(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least 16"):
        create_app(RetrainTrigger(FakeSubmit()), "short")


def test_kfp_submitter_calls_create_run_from_pipeline_package(tmp_path):
    pkg = tmp_path / "pipeline.yaml"
    pkg.write_text("pipelineSpec: {}\n")

    class Result:
        run_id = "abc-123"

    class FakeClient:
        calls = []

        def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None,
                                             experiment_name=None, **kw):
            self.calls.append((pipeline_file, arguments, run_name, experiment_name, kw))
            return Result()

    client = FakeClient()
    data = {"corpus": "iemocap", "source": "s3://corpora/iemocap"}
    submit = kfp_submitter(client, pkg, experiment="emo-exp", params={"epochs": 3, **data},
                           namespace="team-a", service_account="emoflow-runner")
    assert submit("Emo Model", alert()) == "abc-123"
    path, args, name, exp, kw = client.calls[0]
    assert path == str(pkg) and args == {"alias": "candidate", "epochs": 3, **data} and exp == "emo-exp"
    assert kw == {"namespace": "team-a", "service_account": "emoflow-runner"}
    assert name.startswith("emoflow-retrain-emo-model-")
    with pytest.raises(ValueError, match="does not exist"):
        kfp_submitter(client, tmp_path / "nope.yaml")


@pytest.mark.parametrize("params, missing", [
    (None, "corpus and source not given"),
    ({"epochs": 3}, "corpus and source not given"),
    ({"corpus": "iemocap"}, "source not given"),
])
def test_kfp_submitter_refuses_to_retrain_without_the_runs_data(tmp_path, params, missing):
    """No fallback to the pipeline defaults (corpus=demo): the webhook does not start without them."""
    pkg = tmp_path / "pipeline.yaml"
    pkg.write_text("pipelineSpec: {}\n")
    with pytest.raises(ValueError, match=missing + r".*--config run.yaml.*never used for retraining"):
        kfp_submitter(object(), pkg, params=params)
    with pytest.raises(ValueError, match="unknown run parameter 'corpuss'"):
        kfp_submitter(object(), pkg, params={"corpuss": "iemocap", "source": "/data"})
