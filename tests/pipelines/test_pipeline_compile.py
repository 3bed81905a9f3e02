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


def all_tasks(spec: dict) -> dict:
    """Every task of every DAG (root, loops, conditions), by task name (names are unique)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    found = {}
    for dag in dags:
        for name, task in dag["tasks"].items():
            assert name not in found, name
            found[name] = task
    return found


def dag_of(spec: dict, task_name: str) -> str:
    """The component (DAG) holding `task_name`."""
    for name, comp in spec["components"].items():
        if task_name in comp.get("dag", {}).get("tasks", {}):
            return name
    return "root"


TRAINING_EXECS = {"exec-train", "exec-train-fold", "exec-finalize"}


def test_training_tasks_request_a_gpu(compiled):
    _, spec, _ = compiled
    train_execs = {name for name in executors(spec) if name.startswith(("exec-train", "exec-finalize"))}
    assert train_execs == TRAINING_EXECS
    for name in TRAINING_EXECS:
        res = executors(spec)[name]["container"]["resources"]
        assert "accelerator_type" in res["accelerator"]["resourceType"], name
        assert "gpu_count" in res["accelerator"]["resourceCount"], name
        assert res["memoryLimit"] > 16 and res["cpuLimit"] >= 4, name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    assert params["gpu_count"]["defaultValue"] == 1
    # no other step asks for a GPU
    for name, ex in executors(spec).items():
        if name not in TRAINING_EXECS:
            assert "accelerator" not in ex["container"].get("resources", {}), name


def test_training_tasks_carry_node_selector_and_tolerations(compiled):
    _, _, k8s = compiled
    for name in TRAINING_EXECS:
        train = k8s[name]
        assert train["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--node_selector"
        assert train["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "pipelinechannel--tolerations"
    for name in set(k8s) - TRAINING_EXECS:
        assert "nodeSelector" not in k8s[name] and "tolerations" not in k8s[name], name


def test_secrets_are_env_from_a_kubernetes_secret_not_inlined(compiled):
    text, spec, k8s = compiled
    for name in ("exec-ingest", "exec-transcribe", "exec-fingerprint", "exec-features", "exec-train",
                 "exec-plan-folds", "exec-train-fold", "exec-finalize", "exec-register", "exec-register-2",
                 "exec-deploy"):
        envs = k8s[name]["secretAsEnv"]
        assert envs[0]["secretName"] == training.S3_SECRET
        assert {e["envVar"] for e in envs[0]["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EMOFLOW_S3_ENDPOINT"}
    for ex in executors(spec).values():
        env_names = {e["name"] for e in ex["container"].get("env", [])}
        assert not env_names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_retries_and_timeouts(compiled):
    _, spec, k8s = compiled
    tasks = all_tasks(spec)
    for name in ("train", "train-fold", "finalize"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3, name
        assert tasks[name]["retryPolicy"]["backoffDuration"] == "30s", name
    for name in ("ingest", "transcribe", "fingerprint", "features", "plan-folds", "register", "register-2"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 1, name
    for name in TRAINING_EXECS:
        assert int(k8s[name]["activeDeadlineSeconds"]) == 24 * 3600, name
    for name in ("exec-ingest", "exec-fingerprint", "exec-features", "exec-plan-folds", "exec-register",
                 "exec-register-2", "exec-deploy"):
        assert 0 < int(k8s[name]["activeDeadlineSeconds"]) <= 4 * 3600, name


def test_local_variant_has_no_retries_or_kubernetes_settings(tmp_path):
    path = tmp_path / "local.yaml"
    training.compile_pipeline(str(path), cluster=False)
    docs = list(yaml.safe_load_all(path.read_text()))
    assert all("retryPolicy" not in t for t in all_tasks(docs[0]).values())
    assert len(docs) == 1  # no platform (Kubernetes) section at all


def test_images_come_from_one_place(compiled):
    _, spec, _ = compiled
    for name, ex in executors(spec).items():
        expected = image("train-gpu") if name in TRAINING_EXECS else image("base")
        assert ex["container"]["image"] == expected, name


def test_ingest_takes_corpus_and_source_and_is_not_cached(compiled):
    _, spec, _ = compiled
    ingest = spec["root"]["dag"]["tasks"]["ingest"]
    assert set(ingest["inputs"]["parameters"]) >= {"corpus", "source", "store"}
    assert not ingest["cachingOptions"].get("enableCache", False)  # external data: never cached
    assert spec["root"]["dag"]["tasks"]["features"]["cachingOptions"]["enableCache"] is True


def test_cache_keys_follow_data_and_configuration_content(compiled):
    """KFP's cache key = input parameter values + input artifact ids + image + command, not the data:
    the cached steps take the fingerprint (content hash of the transcribed manifest, the resolved
    presets and the feature config) as a parameter; fingerprint and the alias-moving steps never cache."""
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    fp = tasks["fingerprint"]
    assert not fp["cachingOptions"].get("enableCache", False)
    assert fp["inputs"]["artifacts"]["manifest"]["taskOutputArtifact"] == {
        "outputArtifactKey": "transcribed", "producerTask": "transcribe"}
    keyed = ("architectures", "preset", "feature_config", "epochs", "fold_scheme", "n_folds", "seed")
    assert {k: v["componentInputParameter"] for k, v in fp["inputs"]["parameters"].items()} == {k: k for k in keyed}
    assert tasks["features"]["inputs"]["parameters"]["cache_key"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "fingerprint"}
    for name in ("train", "train-fold", "finalize"):
        assert tasks[name]["cachingOptions"]["enableCache"] is True, name
        assert tasks[name]["inputs"]["parameters"]["cache_key"]["componentInputParameter"] == \
            "pipelinechannel--fingerprint-Output", name
    for name in ("ingest", "register", "register-2", "deploy"):
        assert not tasks[name]["cachingOptions"].get("enableCache", False), name
    # a declared input parameter: its value is part of the executor input, hence of the cache key
    for name in ("comp-features", "comp-train", "comp-train-fold", "comp-finalize"):
        params = spec["components"][name]["inputDefinitions"]["parameters"]
        assert params["cache_key"]["parameterType"] == "STRING", name


def test_one_branch_per_architecture_and_winner_collected(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    loop = tasks["for-loop-2"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--architectures"
    assert dag_of(spec, "train") == "comp-for-loop-2"
    reg = tasks["register"]
    assert reg["inputs"]["artifacts"]["models"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["architectures"]["defaultValue"] == ["a1"]
    assert params["fan_out_folds"]["defaultValue"] is False and params["fan_out_folds"]["parameterType"] == "BOOLEAN"


def test_optional_fan_out_per_fold(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    branches = spec["components"]["comp-condition-branches-1"]["dag"]
    cond = {t["taskInfo"]["name"]: t["triggerPolicy"]["condition"] for t in branches["tasks"].values()}
    assert cond["one-task-per-architecture"] == "inputs.parameter_values['pipelinechannel--fan_out_folds'] == false"
    assert cond["fold-fan-out"] == "!(inputs.parameter_values['pipelinechannel--fan_out_folds'] == false)"
    # architectures × folds: an outer loop over architectures, an inner one over the planned folds
    outer = tasks[f"for-loop-{dag_of(spec, 'plan-folds').rsplit('-', 1)[1]}"]
    assert outer["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--architectures"
    assert outer["iteratorPolicy"]["parallelismLimit"] == training.ARCH_PARALLELISM
    inner_name = dag_of(spec, "train-fold").removeprefix("comp-")
    inner = tasks[inner_name]
    assert inner["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-folds-Output"
    assert inner["iteratorPolicy"]["parallelismLimit"] == training.FOLD_PARALLELISM
    assert training.ARCH_PARALLELISM * training.FOLD_PARALLELISM >= 20  # 4 architectures × 5 IEMOCAP folds
    fold_in = tasks["train-fold"]["inputs"]["parameters"]
    item = "pipelinechannel--plan-folds-Output-loop-item"
    assert fold_in["arch"] == {"componentInputParameter": item, "parameterExpressionSelector": 'parseJson(string_value)["arch"]'}
    assert fold_in["fold"] == {"componentInputParameter": item, "parameterExpressionSelector": 'parseJson(string_value)["fold"]'}
    # the folds' predictions are collected into finalize, whose outputs feed evaluate and register
    fin = tasks["finalize"]
    assert fin["inputs"]["artifacts"]["fold_predictions"]["taskOutputArtifact"] == {
        "outputArtifactKey": "pipelinechannel--train-fold-predictions", "producerTask": inner_name}
    assert tasks["evaluate-2"]["inputs"]["artifacts"]["predictions"]["taskOutputArtifact"]["producerTask"] == "finalize"
    reg2 = tasks["register-2"]["inputs"]["artifacts"]
    assert reg2["models"]["taskOutputArtifact"]["outputArtifactKey"] == "pipelinechannel--finalize-model"
    assert reg2["evaluations"]["taskOutputArtifact"]["outputArtifactKey"] == "pipelinechannel--evaluate-2-evaluation"
    # exactly one registration comes out (dsl.OneOf) and is what deploy gets
    selectors = branches["outputs"]["parameters"]["pipelinechannel--condition-branches-1-oneof-1"]
    assert [s["outputParameterKey"] for s in selectors["valueFromOneof"]["parameterSelectors"]] == [
        "pipelinechannel--register-Output", "pipelinechannel--register-2-Output"]
    assert spec["root"]["dag"]["outputs"]["parameters"]["Output"]["valueFromParameter"]["producerSubtask"] == \
        "condition-branches-1"
    # the finalize/train outputs have the same shape: evaluate and register are the same components
    comps = spec["components"]
    assert comps["comp-finalize"]["outputDefinitions"] == comps["comp-train"]["outputDefinitions"]
    for a, b in (("evaluate", "evaluate-2"), ("register", "register-2")):
        assert {k: v for k, v in comps[f"comp-{a}"].items() if k != "executorLabel"} == \
            {k: v for k, v in comps[f"comp-{b}"].items() if k != "executorLabel"}
        assert executors(spec)[f"exec-{a}"] == executors(spec)[f"exec-{b}"]


def test_parameters_have_descriptions(compiled):
    text, _, _ = compiled
    for name in ("corpus", "source", "architectures", "fan_out_folds", "deploy_target", "accelerator_type"):
        assert f"#    {name}:" in text
