"""The compiled pipeline YAML: what a Kubeflow cluster will actually run."""

import re
import sys
from pathlib import Path

import pytest
import yaml

from emoflow import runconfig
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
    assert params["gpu_count"]["defaultValue"] == "1"
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
    # the deploy pod lives longer than the longest readiness wait a run may ask for
    assert int(k8s["exec-deploy"]["activeDeadlineSeconds"]) > runconfig.MAX_DEPLOY_TIMEOUT_S
    with pytest.raises(runconfig.RunConfigError, match="deploy_timeout_s"):
        runconfig.validate({"deploy_timeout_s": runconfig.MAX_DEPLOY_TIMEOUT_S + 1})


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
    text, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    for p in runconfig.PARAMS:
        assert f"#    {p.name}:" in text
        assert " ".join(params[p.name]["description"].split()) == p.help, p.name


# kfp 2.17 ParameterType of each Python type of a run parameter
PARAMETER_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN",
                   list: "LIST", dict: "STRUCT"}


def test_pipeline_parameters_are_the_run_config(compiled):
    """Names, types, defaults and order of the pipeline's parameters come from emoflow.runconfig."""
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(runconfig.names())
    defaults = runconfig.defaults()
    for p in runconfig.PARAMS:
        assert params[p.name]["parameterType"] == PARAMETER_TYPES[p.type], p.name
        # protobuf Values carry every number as a double: 0 compiles as 0.0
        assert params[p.name]["defaultValue"] == defaults[p.name], p.name
    assert list(training.build_pipeline().component_spec.inputs) == runconfig.names()
    # the cluster defaults, not the demo's
    assert (params["preset"]["defaultValue"], params["deploy_target"]["defaultValue"]) == ("tiny", "kserve")


def component_of(spec: dict, task: dict) -> dict:
    return spec["components"][task["componentRef"]["name"]]


def test_component_inputs_fed_from_a_pipeline_parameter_have_its_type(compiled):
    """A component's explicit signature must agree with the run config wherever a pipeline
    parameter feeds it (a NUMBER fed into a STRING input fails the task at run time)."""
    _, spec, _ = compiled
    root = spec["root"]["inputDefinitions"]["parameters"]
    checked = set()
    for name, task in all_tasks(spec).items():
        if "executorLabel" not in component_of(spec, task):
            continue  # a DAG (loop, condition): its inputs are the channels themselves
        inputs = component_of(spec, task)["inputDefinitions"]["parameters"]
        for input_name, source in task["inputs"].get("parameters", {}).items():
            param = source.get("componentInputParameter", "").removeprefix("pipelinechannel--")
            if input_name not in inputs:
                continue  # a channel the task carries for a pod-spec placeholder (checked below)
            if param in root and "parameterExpressionSelector" not in source:
                assert inputs[input_name]["parameterType"] == root[param]["parameterType"], (name, input_name, param)
                checked.add((name, input_name))
    assert {("deploy", "gpu"), ("deploy", "image"), ("deploy", "timeout_s"), ("train", "epochs"),
            ("features", "assets")} <= checked


# The KFP backend driver (kubeflow/pipelines backend/src/v2/driver, VERSION 2.17.0, commit 7b70c7b) resolves
# a pod-spec placeholder "{{$.inputs.parameters['pipelinechannel--X']}}" (container image, cpu/memory
# limits and requests, accelerator type and count: driver.go initPodSpecPatch / getPodResource) with
# resolvePodSpecInputRuntimeParameter (resolve.go), which returns structpb Value.GetStringValue(): ""
# for a NUMBER, and then `if acceleratorType != "" && acceleratorCount != ""` silently drops the GPU
# limit. So every such placeholder must name an input whose parameterType is STRING.
# nodeSelectorJson and tolerationJson (k8s.go) go through resolveK8sJsonParameter /
# resolveInputParameter: a node selector is read with GetStructValue() into map[string]string (a
# STRUCT whose values are strings); a toleration is a STRUCT (one Toleration) or a LIST of them.
# An imagePullSecret's secretNameParameter is read with GetStringValue(): STRING.
PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


def pod_spec_strings(container: dict) -> dict:
    """The container fields the driver resolves as pod-spec values, by field path."""
    out = {"image": container["image"]}
    for key, value in container.get("resources", {}).items():
        if isinstance(value, str):
            out[f"resources.{key}"] = value
    for key, value in container.get("resources", {}).get("accelerator", {}).items():
        out[f"resources.accelerator.{key}"] = str(value)
    return out


def tasks_of_executor(spec: dict) -> dict:
    """executor label -> [(inputDefinitions of the DAG holding the task, the task)]."""
    dags = [(spec["root"]["inputDefinitions"]["parameters"], spec["root"]["dag"])] + [
        (c.get("inputDefinitions", {}).get("parameters", {}), c["dag"]) for c in spec["components"].values()
        if "dag" in c]
    out: dict = {}
    for dag_inputs, dag in dags:
        for task in dag["tasks"].values():
            label = component_of(spec, task).get("executorLabel")
            if label:
                out.setdefault(label, []).append((dag_inputs, task))
    return out


def parameter_type(spec: dict, dag_inputs: dict, source: dict) -> str:
    """The parameterType of what feeds a task input: a DAG input, another task's output, a constant."""
    if "componentInputParameter" in source:
        name = source["componentInputParameter"]
        # a channel the DAG fails to declare is its own test's failure: type it from the root here
        declared = dag_inputs.get(name) or spec["root"]["inputDefinitions"]["parameters"][
            name.removeprefix("pipelinechannel--")]
        return declared["parameterType"]
    if "taskOutputParameter" in source:
        out = source["taskOutputParameter"]
        producer = next(t for t in all_tasks(spec).values() if t["taskInfo"]["name"] == out["producerTask"])
        return component_of(spec, producer)["outputDefinitions"]["parameters"][out["outputParameterKey"]]["parameterType"]
    value = source["runtimeValue"]["constant"]
    return "STRING" if isinstance(value, str) else type(value).__name__


def test_every_task_input_resolves_in_its_parent_dag(compiled):
    """The driver resolves a componentInputParameter from the inputs of the DAG holding the task
    (resolve.go resolveInputParameter: "parent DAG does not have input parameter …"): each one
    must be declared by that DAG, the loop and condition DAGs included."""
    _, spec, _ = compiled
    dags = [("root", spec["root"])] + [(n, c) for n, c in spec["components"].items() if "dag" in c]
    for dag_name, dag in dags:
        declared = dag.get("inputDefinitions", {}).get("parameters", {})
        for task_name, task in dag["dag"]["tasks"].items():
            for input_name, source in task["inputs"].get("parameters", {}).items():
                if "componentInputParameter" in source:
                    assert source["componentInputParameter"] in declared, (dag_name, task_name, input_name)


def test_pod_spec_placeholders_come_from_string_parameters(compiled):
    _, spec, k8s = compiled
    root = spec["root"]["inputDefinitions"]["parameters"]
    users = tasks_of_executor(spec)
    found = []
    for label, executor in executors(spec).items():
        for path, value in pod_spec_strings(executor["container"]).items():
            for name in PLACEHOLDER.findall(value):
                for dag_inputs, task in users[label]:
                    found.append((label, path))
                    source = task["inputs"]["parameters"][name]
                    assert parameter_type(spec, dag_inputs, source) == "STRING", (label, path, name)
                param = name.removeprefix("pipelinechannel--")
                if param in root:
                    assert root[param]["parameterType"] == "STRING", (label, path, param)
    for label in TRAINING_EXECS:  # not vacuous: the GPU request is parameterised
        assert {(label, "resources.accelerator.resourceType"), (label, "resources.accelerator.resourceCount")} <= set(found)
    # platform-spec inputs: the driver resolves them against the parent DAG's inputs (k8s.go), the
    # JSON ones into what it unmarshals them into
    for label, cfg in k8s.items():
        for dag_inputs, _ in users[label]:
            def fed(name):
                return dag_inputs[name]["parameterType"]

            if "nodeSelector" in cfg:
                assert fed(cfg["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]) == "STRUCT", label
            for tol in cfg.get("tolerations", []):
                assert fed(tol["tolerationJson"]["componentInputParameter"]) in ("STRUCT", "LIST"), label
            for secret in cfg.get("imagePullSecret", []):
                source = secret["secretNameParameter"]
                if "componentInputParameter" in source:
                    assert fed(source["componentInputParameter"]) == "STRING", label


def test_json_pod_spec_parameters_are_what_the_driver_unmarshals():
    """node_selector must be map[string]string, tolerations Kubernetes Toleration objects."""
    assert runconfig.validate({"node_selector": {"nvidia.com/gpu.present": "true"},
                               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                "effect": "NoSchedule"}]})
    with pytest.raises(runconfig.RunConfigError, match="node_selector: labels must map strings to strings"):
        runconfig.validate({"node_selector": {"nvidia.com/gpu.present": True}})
    with pytest.raises(runconfig.RunConfigError, match="tolerations: item 0 has unknown Toleration fields"):
        runconfig.validate({"tolerations": [{"key": "gpu", "effects": "NoSchedule"}]})


@pytest.fixture()
def configured(tmp_path, monkeypatch):
    """The pipeline compiled by `emoflow compile` with a registry, tag and pull secret configured."""
    from emoflow import cli

    monkeypatch.setenv("EMOFLOW_IMAGE_REGISTRY", "reg.example/team")
    monkeypatch.setenv("EMOFLOW_IMAGE_TAG", "9.9.9")
    monkeypatch.setenv(runconfig.PULL_SECRETS_ENV, "regcred")
    path = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "-o", str(path), "--image-pull-secret", "regcred",
                     "--image-pull-secret", "mirror-cred"]) == 0
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    return text, docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_image_is_the_configured_one(configured):
    """Images are resolved when compiling (not when the components were imported), and the serving
    image's default comes from the same settings: nothing points at the placeholder registry."""
    text, spec, k8s = configured
    for name, ex in executors(spec).items():
        kind = "train-gpu" if name in TRAINING_EXECS else "base"
        assert ex["container"]["image"] == f"reg.example/team/emoflow-{kind}:9.9.9", name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["serving_image"]["defaultValue"] == "reg.example/team/emoflow-serve-gpu:9.9.9"
    assert "ghcr.io/your-org" not in text
    # image pull secrets: constants on every task pod, and the InferenceService's default
    assert params["image_pull_secrets"]["defaultValue"] == ["regcred", "mirror-cred"]
    for label in executors(spec):
        assert [s["secretName"] for s in k8s[label]["imagePullSecret"]] == ["regcred", "mirror-cred"], label


def test_deploy_gets_image_timeout_pull_secrets_and_assets(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    deploy = {k: v["componentInputParameter"] for k, v in tasks["deploy"]["inputs"]["parameters"].items()
              if "componentInputParameter" in v}
    for input_name, param in {"image": "serving_image", "timeout_s": "deploy_timeout_s", "gpu": "gpu_count",
                              "image_pull_secrets": "image_pull_secrets", "assets": "assets",
                              "namespace": "namespace"}.items():
        assert deploy[input_name] == f"pipelinechannel--{param}", input_name
    # every task that may load encoders gets the offline-asset mirror
    for name in ("transcribe", "features", "train", "train-fold", "finalize", "deploy"):
        source = tasks[name]["inputs"]["parameters"]["assets"]["componentInputParameter"]
        assert source.removeprefix("pipelinechannel--") == "assets", name
