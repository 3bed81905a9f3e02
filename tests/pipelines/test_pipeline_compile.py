"""The compiled pipeline YAML: what a Kubeflow cluster will actually run."""

import sys
from pathlib import Path

import pytest
import yaml

from emoflow.images import image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipelines import training  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("yaml") / "pipeline.yaml"
    training.compile_pipeline(str(path))
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    return text, docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def test_training_tasks_request_a_gpu(compiled):
    _, spec, _ = compiled
    train_execs = [name for name in executors(spec) if name.startswith("exec-train")]
    assert train_execs == ["exec-train"]
    res = executors(spec)["exec-train"]["container"]["resources"]
    assert "accelerator_type" in res["accelerator"]["resourceType"]
    assert "gpu_count" in res["accelerator"]["resourceCount"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    assert params["gpu_count"]["defaultValue"] == 1
    # no other step asks for a GPU
    for name, ex in executors(spec).items():
        if name != "exec-train":
            assert "accelerator" not in ex["container"].get("resources", {}), name


def test_training_tasks_carry_node_selector_and_tolerations(compiled):
    _, _, k8s = compiled
    train = k8s["exec-train"]
    assert train["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--node_selector"
    assert train["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "pipelinechannel--tolerations"


def test_secrets_are_env_from_a_kubernetes_secret_not_inlined(compiled):
    text, spec, k8s = compiled
    for name in ("exec-ingest", "exec-transcribe", "exec-features", "exec-train", "exec-register", "exec-deploy"):
        envs = k8s[name]["secretAsEnv"]
        assert envs[0]["secretName"] == training.S3_SECRET
        assert {e["envVar"] for e in envs[0]["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EMOFLOW_S3_ENDPOINT"}
    for ex in executors(spec).values():
        env_names = {e["name"] for e in ex["container"].get("env", [])}
        assert not env_names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_retries_and_timeouts(compiled):
    _, spec, k8s = compiled
    tasks = spec["root"]["dag"]["tasks"]
    loop_tasks = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert loop_tasks["train"]["retryPolicy"]["maxRetryCount"] == 3
    for name in ("ingest", "transcribe", "features", "register"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 1, name
    assert int(k8s["exec-train"]["activeDeadlineSeconds"]) == 24 * 3600
    for name in ("exec-ingest", "exec-features", "exec-register", "exec-deploy"):
        assert int(k8s[name]["activeDeadlineSeconds"]) > 0, name


def test_images_come_from_one_place(compiled):
    _, spec, _ = compiled
    for name, ex in executors(spec).items():
        expected = image("train-gpu") if name == "exec-train" else image("base")
        assert ex["container"]["image"] == expected, name


def test_ingest_takes_corpus_and_source_and_is_not_cached(compiled):
    _, spec, _ = compiled
    ingest = spec["root"]["dag"]["tasks"]["ingest"]
    assert set(ingest["inputs"]["parameters"]) >= {"corpus", "source", "store"}
    assert not ingest["cachingOptions"].get("enableCache", False)  # external data: never cached
    assert spec["root"]["dag"]["tasks"]["features"]["cachingOptions"]["enableCache"] is True


def test_one_branch_per_architecture_and_winner_collected(compiled):
    _, spec, _ = compiled
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--architectures"
    reg = spec["root"]["dag"]["tasks"]["register"]
    assert reg["inputs"]["artifacts"]["models"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert spec["root"]["inputDefinitions"]["parameters"]["architectures"]["defaultValue"] == ["a1"]


def test_parameters_have_descriptions(compiled):
    text, _, _ = compiled
    for name in ("corpus", "source", "architectures", "deploy_target", "accelerator_type"):
        assert f"#    {name}:" in text
