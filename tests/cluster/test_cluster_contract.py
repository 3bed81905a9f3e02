"""Everything a cluster sees, checked against the cluster's side of the contract (tests/cluster/contract.py).

Two parts:
- rule tests: each rule catches the defect as it was on main at 7227f1e, on a small object that
  reproduces it, and passes the corrected shape;
- whole-artifact tests: the compiled pipeline (with its Kubernetes platform spec, compiled with
  EMOFLOW_IMAGE_REGISTRY set), every kustomize render (manifests/ and manifests/overlays/*), and the
  InferenceService the deploy step builds, in both KServe modes and both KFP modes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cluster import contract as c
from emoflow import doctor, images
from emoflow.serving import deploy as d  # applies the InferenceService (intercepted below)
from emoflow.serving import isvc as builder  # builds it

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUBECTL = shutil.which("kubectl")
REGISTRY = "registry.example.org/ml"
KFP_MODES = ("standalone", "multi-user")  # overlays named <mode> or <mode>-<variant> (e.g. standalone-cpu)
ISVC_NEEDS = {k: v for k, v in doctor.RBAC_NEEDS.items() if k[0] == "serving.kserve.io"}


# --------------------------------------------------------------------------- renders


def kustomize(path: Path) -> list[dict]:
    if not KUBECTL:
        pytest.skip("kubectl not installed")
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def overlay_dirs() -> dict[str, Path]:
    found = {p.parent.name: p.parent for p in sorted((MANIFESTS / "overlays").glob("*/kustomization.yaml"))}
    return {**found, "monitoring": MANIFESTS}


def kfp_mode(overlay: str) -> str | None:
    return next((m for m in KFP_MODES if overlay == m or overlay.startswith(m + "-")), None)


KFP_OVERLAYS = sorted(name for name in overlay_dirs() if kfp_mode(name))


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict]]:
    return {name: kustomize(path) for name, path in overlay_dirs().items()}


@pytest.fixture(scope="session")
def serving_image() -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(images.REGISTRY_ENV, REGISTRY)
        return images.image("serve-gpu")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) compiled in a fresh process with the registry configured
    (component base images are fixed when the component modules are imported)."""
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    env = {**os.environ, images.REGISTRY_ENV: REGISTRY,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", f"from pipelines import training; training.compile_pipeline({str(path)!r})"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


def run_namespace(mode: str, objects: list[dict]) -> str:
    """Standalone KFP runs in `kubeflow`; multi-user in the profile namespace the overlay renders into."""
    fixed = doctor.RUN_NAMESPACE[mode]
    if fixed:
        return fixed
    spaces = Counter(o["metadata"].get("namespace") for o in objects if o.get("kind") not in c.CLUSTER_SCOPED)
    return spaces.most_common(1)[0][0] if spaces else ""


def deploy_step_isvc(monkeypatch, *, namespace: str, image: str, gpu) -> dict:
    """The InferenceService emoflow.steps.deploy builds (deploy_to_cluster intercepted)."""
    from emoflow import steps

    captured = []
    monkeypatch.setattr(d, "deploy_to_cluster", lambda isvc, **kw: captured.append(isvc) or {"status": {}})
    steps.deploy("emoflow@production", "s3://emoflow", target="kserve", namespace=namespace, isvc_name="emoflow",
                 storage_uri="s3://emoflow/registry/emoflow/v3/", gpu=gpu, image=image,
                 image_pull_secrets=["regcred"], assets="s3://emoflow/assets")
    assert len(captured) == 1, "the deploy step did not hand an InferenceService to deploy_to_cluster"
    return builder.to_manifest(captured[0])


# --------------------------------------------------------------------------- rule tests (the defects of 7227f1e)


def mini_pipeline(gpu_type: str = "NUMBER_INTEGER", threaded: bool = False, deploy_inputs: dict | None = None) -> dict:
    """The shape of today's compiled pipeline: train inside a loop DAG, its accelerator count a placeholder."""
    loop_inputs = {"pipelinechannel--gpu_count": {"parameterType": gpu_type}} if threaded else {}
    loop_binding = {"pipelinechannel--gpu_count": {"componentInputParameter": "gpu_count"}} if threaded else {}
    return {
        "root": {"inputDefinitions": {"parameters": {
                     "gpu_count": {"parameterType": gpu_type, "defaultValue": 1 if gpu_type != "STRING" else "1"},
                     "serving_image": {"parameterType": "STRING", "defaultValue": "ghcr.io/your-org/emoflow-serve-gpu:0.1.0"}}},
                 "dag": {"tasks": {
                     "for-loop-2": {"componentRef": {"name": "comp-for-loop-2"}, "inputs": {"parameters": loop_binding}},
                     "deploy": {"componentRef": {"name": "comp-deploy"}, "inputs": {"parameters": deploy_inputs or {}}}}}},
        "components": {
            "comp-for-loop-2": {"inputDefinitions": {"parameters": loop_inputs}, "dag": {"tasks": {"train": {
                "componentRef": {"name": "comp-train"},
                "inputs": {"parameters": {"pipelinechannel--gpu_count": {
                    "componentInputParameter": "pipelinechannel--gpu_count"}}}}}}},
            "comp-train": {"executorLabel": "exec-train"},
            "comp-deploy": {"executorLabel": "exec-deploy"},
        },
        "deploymentSpec": {"executors": {
            "exec-train": {"container": {"image": "ghcr.io/your-org/emoflow-train-gpu:0.1.0", "resources": {
                "accelerator": {"resourceType": "nvidia.com/gpu",
                                "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpu_count']}}"}}}},
            "exec-deploy": {"container": {"image": "ghcr.io/your-org/emoflow-base:0.1.0"}}}},
    }


def test_rule_pod_spec_placeholders_need_string_parameters():
    problems = c.pod_spec_placeholder_problems(mini_pipeline("NUMBER_INTEGER", threaded=True))
    assert len(problems) == 1 and "pipeline parameter 'gpu_count' of type NUMBER_INTEGER" in problems[0]
    assert "GetStringValue()" in problems[0]
    assert c.pod_spec_placeholder_problems(mini_pipeline("STRING", threaded=True)) == []


def test_rule_bindings_need_an_input_of_the_enclosing_dag():
    problems = c.dangling_binding_problems(mini_pipeline("STRING", threaded=False))
    assert problems == ["comp-for-loop-2 task train: input 'pipelinechannel--gpu_count' reads "
                        "'pipelinechannel--gpu_count', which comp-for-loop-2 does not declare: the KFP driver fails "
                        "with \"parent DAG does not have input parameter pipelinechannel--gpu_count\""]
    assert c.dangling_binding_problems(mini_pipeline("STRING", threaded=True)) == []


def test_rule_images_come_from_the_configured_registry():
    spec = mini_pipeline("STRING", threaded=True)
    problems = c.image_problems([("pipeline", spec)], REGISTRY, images.DEFAULT_REGISTRY)
    assert any("exec-train.container.image" in p and "not from the configured registry" in p for p in problems)
    assert any("serving_image.defaultValue" in p and "placeholder registry" in p for p in problems)
    fixed = json.loads(json.dumps(spec).replace(images.DEFAULT_REGISTRY, REGISTRY))
    assert c.image_problems([("pipeline", fixed)], REGISTRY, images.DEFAULT_REGISTRY) == []


def test_rule_deploy_image_is_fixed_at_compile_time(serving_image):
    problems = c.deploy_image_problems(mini_pipeline(), serving_image)  # today: no image input at all
    assert len(problems) == 1 and "picked at run time from the pod's environment" in problems[0]
    bound = mini_pipeline(deploy_inputs={"serving_image": {"componentInputParameter": "serving_image"}})
    problems = c.deploy_image_problems(bound, serving_image)  # a placeholder default
    assert len(problems) == 1 and "ghcr.io/your-org/emoflow-serve-gpu:0.1.0" in problems[0]
    bound["root"]["inputDefinitions"]["parameters"]["serving_image"]["defaultValue"] = serving_image
    assert c.deploy_image_problems(bound, serving_image) == []


def today_base(namespace: str = "emoflow", subject_namespace: str = "emoflow") -> list[dict]:
    """The objects of manifests/base at 7227f1e (Secret, accounts, Role, RoleBinding in `emoflow`)."""
    meta = {"namespace": namespace}
    return [
        {"kind": "Namespace", "metadata": {"name": namespace}},
        {"kind": "ServiceAccount", "metadata": {"name": "emoflow-s3", **meta}, "secrets": [{"name": "emoflow-s3"}]},
        {"kind": "ServiceAccount", "metadata": {"name": "emoflow-pipeline", **meta}},
        {"kind": "Secret", "metadata": {"name": "emoflow-s3", **meta}},
        {"kind": "Role", "metadata": {"name": "emoflow-deployer", **meta}, "rules": [
            {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
             "verbs": ["create", "get", "list", "watch", "patch"]}]},
        {"kind": "RoleBinding", "metadata": {"name": "emoflow-deployer", **meta},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "emoflow-deployer"},
         "subjects": [{"kind": "ServiceAccount", "name": "emoflow-pipeline", "namespace": subject_namespace}]},
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "emoflow", **meta},
         "spec": {"predictor": {"serviceAccountName": "emoflow-s3", "containers": [{"name": "kserve-container"}]}}},
    ]


def test_rule_pipeline_secret_must_exist_where_pods_run():
    objects = today_base()
    refs = [("Secret", "kubeflow", "emoflow-s3", "compiled pipeline exec-ingest")]
    problems = c.reference_problems(objects, extra=refs)
    assert problems == ["compiled pipeline exec-ingest: Secret 'emoflow-s3' is referenced in namespace kubeflow "
                        "but exists only in ['emoflow']"]
    assert c.reference_problems(today_base("kubeflow", "kubeflow"), extra=refs) == []


def test_rule_subject_without_namespace_is_in_the_bindings_namespace():
    objects = today_base("kubeflow", "kubeflow")
    del objects[5]["subjects"][0]["namespace"]
    assert c.reference_problems(objects) == []


def test_rule_namespace_override_leaves_subjects_behind():
    # `namespace: team-a` in an overlay, as the README suggested: subjects keep `emoflow`
    objects = today_base("team-a")
    problems = c.reference_problems(objects)
    assert problems == ["RoleBinding team-a/emoflow-deployer subjects[0]: ServiceAccount 'emoflow-pipeline' is "
                        "referenced in namespace emoflow but exists only in ['team-a']"]


def test_rule_overlay_must_not_own_the_run_namespace():
    problems = c.namespace_problems(today_base("team-a"), run_namespace="team-a")
    assert len(problems) == 1 and "`kubectl delete -k` would delete it" in problems[0]
    minio = {"kind": "Deployment", "metadata": {"name": "minio"}}  # gpu + dev-minio component: no namespace
    assert c.namespace_problems([minio]) == ["Deployment minio: rendered without a namespace (lands in whatever "
                                             "namespace kubectl's context points at)"]


def test_rule_run_account_needs_inferenceservice_rights():
    account = ("kubeflow", doctor.RUN_SERVICE_ACCOUNT["standalone"])
    problems = c.rbac_problems(today_base(), account, "kubeflow", ISVC_NEEDS)
    assert problems == ["ServiceAccount kubeflow/pipeline-runner may not create, get, list, update, patch, delete "
                        "inferenceservices.serving.kserve.io in namespace kubeflow"]
    fixed = today_base("kubeflow", "kubeflow")
    fixed[4]["rules"][0]["verbs"] = ["*"]
    fixed[5]["subjects"] = [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    assert c.rbac_problems(fixed, account, "kubeflow", ISVC_NEEDS) == []


def today_podmonitor(port="http1") -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": "emoflow-predictor", "namespace": "emoflow"},
            "spec": {"selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "emoflow"}},
                     "podMetricsEndpoints": [{"port": port, "path": "/metrics"}]}}


def test_rule_scrape_port_exists_in_both_kserve_modes():
    isvc = builder.to_manifest(builder.build_inference_service("emoflow", "emoflow", "s3://b/registry/emoflow/v1/", gpu=0))
    assert c.scrape_port_problems(today_podmonitor(), c.predictor_pod(isvc, "RawDeployment"), "RawDeployment") == []
    problems = c.scrape_port_problems(today_podmonitor(), c.predictor_pod(isvc, "Serverless"), "Serverless")
    assert problems == ["PodMonitor emoflow/emoflow-predictor (Serverless mode): no endpoint port ['http1'] is a port "
                        "of the predictor pod (its ports: [('http-autometric', 9090), ('http-usermetric', 9091), "
                        "('https-port', 8112), ('queue-port', 8012), ('user-port', 8080)]): nothing is scraped"]
    by_number = today_podmonitor()
    by_number["spec"]["podMetricsEndpoints"] = [{"portNumber": 8080, "path": "/metrics"}]
    assert all(c.scrape_port_problems(by_number, c.predictor_pod(isvc, m), m) == [] for m in c.MODES)
    per_mode = today_podmonitor()  # one endpoint per mode: each pod shape matches exactly one
    per_mode["spec"]["podMetricsEndpoints"] = [{"port": "http1"}, {"port": "user-port"}]
    assert all(c.scrape_port_problems(per_mode, c.predictor_pod(isvc, m), m) == [] for m in c.MODES)
    twice = today_podmonitor()
    twice["spec"]["podMetricsEndpoints"] = [{"port": "http1"}, {"portNumber": 8080}]
    assert c.scrape_port_problems(twice, c.predictor_pod(isvc, "RawDeployment"), "RawDeployment") == [
        "PodMonitor emoflow/emoflow-predictor (RawDeployment mode): the predictor is scraped 2 times "
        "(podMetricsEndpoints[0] -> kserve-container:http1, podMetricsEndpoints[1] -> kserve-container:http1): "
        "every series is duplicated"]
    elsewhere = copy.deepcopy(isvc)
    elsewhere["metadata"]["namespace"] = "kubeflow"
    problems = c.scrape_port_problems(by_number, c.predictor_pod(elsewhere, "RawDeployment"), "RawDeployment")
    assert problems == ["PodMonitor emoflow/emoflow-predictor (RawDeployment mode): watches namespace(s) "
                        "['emoflow'], the predictor runs in 'kubeflow'"]


def test_rule_crd_facts_catch_what_the_api_server_would_prune_or_reject():
    isvc = builder.to_manifest(builder.build_inference_service("emoflow", "emoflow", "s3://b/registry/emoflow/v1/", gpu=1))
    assert c.crd_problems(isvc) == []
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["scaleMetric"] = "gpu"
    bad["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    bad["spec"]["predictor"]["imagePullSecret"] = [{"name": "regcred"}]
    del bad["spec"]["predictor"]["containers"][0]["name"]
    assert sorted(c.crd_problems(bad)) == sorted([
        "InferenceService emoflow/emoflow: spec.predictor.scaleMetric: 'gpu' is not one of "
        "['cpu', 'memory', 'concurrency', 'rps']",
        "InferenceService emoflow/emoflow: spec.predictor.containers[].ports[].containerPort: expected integer, "
        "got str '8080'",
        "InferenceService emoflow/emoflow: spec.predictor.imagePullSecret: unknown field (the API server prunes it)",
        "InferenceService emoflow/emoflow: spec.predictor.containers[]: required field 'name' is missing"])
    monitor = today_podmonitor(port=8080)  # `port` is a name; a number goes in portNumber
    assert c.crd_problems(monitor) == ["PodMonitor emoflow/emoflow-predictor: spec.podMetricsEndpoints[].port: "
                                       "expected string, got int 8080"]
    assert "required field 'selector' is missing" in c.crd_problems(
        {**today_podmonitor(), "spec": {"podMetricsEndpoints": []}})[0]
    assert "not the served version" in c.crd_problems({**isvc, "apiVersion": "serving.kserve.io/v1alpha1"})[0]


def test_pinned_facts_cite_their_source():
    for path in sorted(c.PINNED.glob("*.yaml")):
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert "Our own test data" in header, path.name
        assert "commit" in header and "Apache" in header, f"{path.name}: name the upstream commit and licence"


# --------------------------------------------------------------------------- whole artifacts


def test_compiled_pod_spec_placeholders_are_strings(compiled):
    spec, _ = compiled
    assert c.pod_spec_placeholder_problems(spec) == []


def test_compiled_task_inputs_resolve_in_their_dag(compiled):
    spec, _ = compiled
    assert c.dangling_binding_problems(spec) == []


def test_compiled_images_are_the_configured_ones(compiled, serving_image):
    spec, platform = compiled
    problems = c.image_problems([("pipeline", spec), ("platform spec", platform)], REGISTRY, images.DEFAULT_REGISTRY)
    problems += c.deploy_image_problems(spec, serving_image)
    assert problems == []


@pytest.mark.parametrize("gpu", ["1", 0])
def test_deploy_step_inference_service(monkeypatch, serving_image, gpu):
    isvc = deploy_step_isvc(monkeypatch, namespace="kubeflow", image=serving_image, gpu=gpu)
    assert c.crd_problems(isvc) == []
    assert c.image_problems([("deploy step InferenceService", isvc)], REGISTRY, images.DEFAULT_REGISTRY) == []
    pod = isvc["spec"]["predictor"]
    assert [s["name"] for s in pod.get("imagePullSecrets") or []] == ["regcred"]
    assert {"name": "EMOFLOW_ASSETS_URI", "value": "s3://emoflow/assets"} in pod["containers"][0].get("env", [])


def test_overlays_for_both_kfp_modes_exist():
    assert set(KFP_MODES) <= set(overlay_dirs()), f"overlays: {sorted(overlay_dirs())}"


def test_crd_objects_of_every_render_match_the_pinned_facts(renders):
    problems = [p for objects in renders.values() for o in objects
                if (str(o.get("apiVersion", "")).rpartition("/")[0], o.get("kind")) in c.CRD_FACTS
                for p in c.crd_problems(o)]
    assert problems == []


@pytest.mark.parametrize("overlay", KFP_OVERLAYS or ["standalone", "multi-user"])
def test_kfp_mode_overlay_fits_where_runs_happen(renders, compiled, overlay):
    if overlay not in renders:
        pytest.fail(f"no manifests/overlays/{overlay}")
    objects, mode = renders[overlay], kfp_mode(overlay)
    ns = run_namespace(mode, objects)
    runner = (ns, doctor.RUN_SERVICE_ACCOUNT[mode])
    pipeline_refs = [("Secret", ns, name, where) for name, where in c.pipeline_secret_refs(compiled[1])]
    problems = c.namespace_problems(objects, run_namespace=ns)
    problems += c.reference_problems(objects, extra=pipeline_refs, external=[("ServiceAccount", *runner)])
    problems += c.rbac_problems(objects, runner, ns, ISVC_NEEDS,
                                external_rules=c.pinned("kfp-modes.yaml")[mode]["external_rules"])
    assert problems == []


def runner_accounts(objects: list[dict]) -> list[tuple[str, str, str]]:
    """The accounts KFP itself provides: pipeline-runner in kubeflow, default-editor in every profile."""
    spaces = {o["metadata"].get("namespace") for o in objects if o["metadata"].get("namespace")}
    return [("ServiceAccount", doctor.RUN_NAMESPACE["standalone"], doctor.RUN_SERVICE_ACCOUNT["standalone"])] + [
        ("ServiceAccount", ns, doctor.RUN_SERVICE_ACCOUNT["multi-user"]) for ns in sorted(spaces)]


@pytest.mark.parametrize("name", sorted(set(overlay_dirs()) - set(KFP_OVERLAYS)))
def test_other_renders_are_self_consistent(renders, name):
    objects = renders[name]
    assert c.namespace_problems(objects) + c.reference_problems(objects, external=runner_accounts(objects)) == []


def components_holding(predicate) -> list[Path]:
    """The kustomize Components under manifests/ whose render has an object ``predicate`` accepts."""
    found = []
    for path in sorted(MANIFESTS.glob("**/kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind") == "Component":
            text = "\n".join(f.read_text() for f in path.parent.glob("*.yaml"))
            if predicate(path.parent, text):
                found.append(path.parent)
    return found


def compose(tmp_path: Path, overlay: str, component: Path) -> list[dict]:
    """Render overlay + component, as the README tells users to combine them."""
    root = tmp_path / f"manifests-{overlay}-{component.name}"
    shutil.copytree(MANIFESTS, root)
    combo = root / "overlays" / f"combo-{overlay}-{component.name}"
    combo.mkdir()
    (combo / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [f"../{overlay}"],
        "components": [os.path.relpath(root / component.relative_to(MANIFESTS), combo)]}))
    return kustomize(combo)


def test_dev_minio_component_composes_with_each_kfp_mode_overlay(tmp_path):
    """The documented combination (an overlay plus the dev MinIO component) puts MinIO in the run namespace."""
    components = components_holding(lambda folder, text: "minio" in folder.name)
    assert components, "no dev MinIO kustomize Component under manifests/"
    problems = []
    for overlay in KFP_OVERLAYS or ["gpu"]:
        objects = compose(tmp_path, overlay, components[0])
        problems += c.namespace_problems(objects, run_namespace=run_namespace(kfp_mode(overlay), objects)
                                         if kfp_mode(overlay) else None)
    assert problems == []


@pytest.mark.parametrize("kserve_mode", c.MODES)
@pytest.mark.parametrize("mode", KFP_MODES)
def test_podmonitor_scrapes_the_predictor(renders, monkeypatch, tmp_path, serving_image, mode, kserve_mode):
    """Some PodMonitor that a documented render puts in place (a render of its own, or the overlay
    plus a monitoring Component) scrapes the predictor the deploy step builds, exactly once."""
    ns = run_namespace(mode, renders.get(mode, []))
    isvc = deploy_step_isvc(monkeypatch, namespace=ns or "profile", image=serving_image, gpu="1")
    monitors = [o for objects in renders.values() for o in objects if o.get("kind") == "PodMonitor"]
    if mode in renders:
        for component in components_holding(lambda folder, text: "monitoring" in folder.name or "kind: PodMonitor" in text):
            monitors += [o for o in compose(tmp_path, mode, component) if o.get("kind") == "PodMonitor"]
    assert monitors, "no PodMonitor is rendered"
    pod = c.predictor_pod(isvc, kserve_mode)
    found = {c.name_of(m): c.scrape_port_problems(m, pod, kserve_mode) for m in monitors}
    assert any(not p for p in found.values()), found
