"""``emoflow doctor`` against recorded API responses served to the real kubernetes client, and its
store / asset-mirror checks against a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
from doctor.fake_cluster import TOKEN, FakeCluster, not_found, recorded
from kubernetes import config

from emoflow import assets
from emoflow import doctor as dr
from emoflow.cli import main

REPO = Path(__file__).resolve().parents[2]
HEALTHZ = "/api/v1/namespaces/kubeflow/services/ml-pipeline:8888/proxy/apis/v2beta1/healthz"
CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
ISVC_CONFIG = "/api/v1/namespaces/kserve/configmaps/inferenceservice-config"
FEATURES = "/api/v1/namespaces/knative-serving/configmaps/config-features"
SECRET = "/api/v1/namespaces/kubeflow/secrets/emoflow-s3"
RUNNER = "system:serviceaccount:kubeflow:pipeline-runner"
MIRROR_API = hasattr(assets, "assets_for") and hasattr(assets, "read_manifest")


@pytest.fixture
def fake():
    with FakeCluster() as cluster:
        yield cluster.healthy()


def run_doctor(fake: FakeCluster, tmp_path: Path, **options) -> dict[str, dr.Result]:
    """Run every check; the results by name (the last of a name wins), each printed."""
    api = config.new_client_from_config(config_file=str(fake.kubeconfig(tmp_path / "kubeconfig")))
    results = dr.Doctor(dr.Options(**options), api_client=api).run()
    return {r.name: r for r in results} | {"_all": results}


def failures(results: dict) -> list[str]:
    return [r.name for r in results["_all"] if not r.ok]


def set_secret(fake: FakeCluster, **values: str) -> None:
    secret = fake.body("GET", SECRET)
    secret["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


# --------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize("toleration, taint, expected", [
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
     {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, True),
    ({"key": "nvidia.com/gpu", "operator": "Exists"}, {"key": "nvidia.com/gpu", "effect": "NoExecute"}, True),
    ({"operator": "Exists"}, {"key": "anything", "value": "x", "effect": "NoSchedule"}, True),
    ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
     {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, True),
    ({"key": "nvidia.com/gpu", "value": "present"}, {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, True),
    ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
     {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, False),
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"},
     {"key": "nvidia.com/gpu", "effect": "NoSchedule"}, False),
    ({"key": "dedicated", "operator": "Exists"}, {"key": "nvidia.com/gpu", "effect": "NoSchedule"}, False),
])
def test_toleration_matching_follows_kubernetes(toleration, taint, expected):
    assert dr.tolerates(toleration, taint) is expected


def test_prefer_no_schedule_taints_do_not_block():
    taints = [{"key": "a", "effect": "PreferNoSchedule"}, {"key": "b", "effect": "NoExecute"}]
    assert dr.untolerated_taints(taints, []) == [taints[1]]


@pytest.mark.parametrize("tag, version", [("2.5.0", (2, 5, 0)), ("v2.14.3", (2, 14, 3)), ("2.15.0-rc.1", (2, 15, 0)),
                                          ("unknown", None), ("", None)])
def test_kfp_versions(tag, version):
    assert dr.parse_version(tag) == version


def test_secret_keys_are_the_pipelines():
    sys.path.insert(0, str(REPO))
    from pipelines import training

    assert dr.S3_SECRET == training.S3_SECRET
    assert set(dr.S3_SECRET_KEYS) == set(training.S3_SECRET_KEYS)


def test_recorded_responses_have_the_real_field_names():
    """Every recorded Kubernetes body uses only the fields of its kind in the kubernetes SDK's
    models; the KFP healthz body has exactly the JSON fields of the API server's healthzResponse
    (kubeflow/pipelines backend/src/apiserver/main.go), a superset of the SDK's model."""
    import kfp_server_api

    from emoflow.serving.isvc import unknown_fields

    types = {"NodeList": "V1NodeList", "ConfigMap": "V1ConfigMap", "Namespace": "V1Namespace",
             "CustomResourceDefinition": "V1CustomResourceDefinition", "Status": "V1Status",
             "SelfSubjectAccessReview": "V1SelfSubjectAccessReview", "ServiceAccount": "V1ServiceAccount",
             "Secret": "V1Secret"}
    for path in sorted((Path(__file__).parent / "recorded").glob("*.json")):
        body = json.loads(path.read_text())
        if path.name == "kfp-healthz.json":
            assert set(body) == {"commit_sha", "tag_name", "multi_user", "pipeline_store"}
            assert set(kfp_server_api.V2beta1GetHealthzResponse.attribute_map.values()) <= set(body)
        else:
            assert unknown_fields(body, types[body["kind"]]) == [], path.name


# --------------------------------------------------------------------------- the checks on recorded responses


def test_healthy_cluster_passes(fake, tmp_path):
    results = run_doctor(fake, tmp_path)
    assert failures(results) == ["asset mirror"], [r.lines() for r in results["_all"] if not r.ok]
    assert "no --assets mirror was given" in results["asset mirror"].detail  # the store/mirror: on SeaweedFS below
    assert "Kubeflow Pipelines 2.5.0 (standalone)" in results["KFP API"].detail
    assert "Serverless = Knative" in results["KServe deployment mode"].detail
    assert "gpu-h200-0 (8 GPU)" in results["GPU nodes"].detail and "cpu-0" not in results["GPU nodes"].detail


@pytest.mark.parametrize("change, expected", [
    ({"tag_name": "2.4.1"}, "needs >= 2.5.0"),
    ({"tag_name": "unknown"}, "needs >= 2.5.0"),
    ({"multi_user": True}, "runs in multi-user mode, --mode says standalone"),
])
def test_kfp_version_and_mode(fake, tmp_path, change, expected):
    fake.body("GET", HEALTHZ).update(change)
    result = run_doctor(fake, tmp_path)["KFP API"]
    assert not result.ok and expected in result.detail and result.fix


def test_kfp_host_given_is_reached_over_http_with_the_sdk_token(fake, tmp_path, monkeypatch):
    fake.get("/pipeline/apis/v2beta1/healthz", recorded("kfp-healthz.json"))
    result = run_doctor(fake, tmp_path, kfp_host=fake.url + "/pipeline/")["KFP API"]
    assert not result.ok and "HTTP 401" in result.detail and "--kfp-token-file" in result.fix
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert run_doctor(fake, tmp_path, kfp_host=fake.url + "/pipeline/", kfp_token_file=str(tmp_path / "token"))["KFP API"].ok
    result = run_doctor(fake, tmp_path, kfp_host=fake.url + "/pipeline/", kfp_token_file=str(tmp_path / "none"))["KFP API"]
    assert not result.ok and "cannot read the KFP token file" in result.detail
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "token"))
    assert run_doctor(fake, tmp_path, kfp_host=fake.url + "/pipeline/")["KFP API"].ok
    result = run_doctor(fake, tmp_path, kfp_host=fake.url + "/dashboard")["KFP API"]
    assert not result.ok and "HTTP 404" in result.detail


def test_kfp_not_installed(fake, tmp_path):
    del fake.routes[("GET", HEALTHZ)]
    result = run_doctor(fake, tmp_path)["KFP API"]
    assert not result.ok and "HTTP 404" in result.detail and "--kfp-host" in result.fix


def test_missing_kserve_crd(fake, tmp_path):
    fake.get(CRD + "inferenceservices.serving.kserve.io", not_found("customresourcedefinitions",
             "inferenceservices.serving.kserve.io", "apiextensions.k8s.io"), 404)
    result = run_doctor(fake, tmp_path)["KServe CRD"]
    assert not result.ok and "not found" in result.detail and "KServe 0.21" in result.fix


def test_knative_flags_disabled_fail_with_the_patch(fake, tmp_path):
    fake.get(FEATURES, recorded("config-features.json"))  # as Knative ships it: both disabled
    result = run_doctor(fake, tmp_path)["Knative feature flags"]
    assert not result.ok
    assert "kubernetes.podspec-nodeselector=disabled" in result.detail
    assert "kubectl -n knative-serving patch configmap config-features" in result.fix
    assert json.loads(result.fix.split("-p ")[1].strip("'")) == {"data": {
        "kubernetes.podspec-nodeselector": "enabled", "kubernetes.podspec-tolerations": "enabled"}}


def test_knative_flag_allowed_is_enough_and_not_needed_without_placement(fake, tmp_path):
    fake.body("GET", FEATURES)["data"].update({"kubernetes.podspec-nodeselector": "Allowed",
                                                 "kubernetes.podspec-tolerations": "allowed"})
    assert run_doctor(fake, tmp_path)["Knative feature flags"].ok
    fake.get(FEATURES, recorded("config-features.json"))
    result = run_doctor(fake, tmp_path, node_selector={}, tolerations=[])["Knative feature flags"]
    assert result.ok and "not needed" in result.detail


@pytest.mark.parametrize("deploy, ok, text", [
    ('{"defaultDeploymentMode": "RawDeployment"}', True, "RawDeployment = Standard (kserve/inferenceservice-config); "
                                                          "canary_traffic_percent needs Knative mode"),
    ('{"defaultDeploymentMode": "Knative"}', True, "Knative"),
    ('{"defaultDeploymentMode": "ModelMesh"}', False, "ModelMesh"),
    ('{"defaultDeploymentMode": "Turbo"}', False, "unknown defaultDeploymentMode 'Turbo'"),
    ("not json", False, "not JSON"),
])
def test_deployment_modes(fake, tmp_path, deploy, ok, text):
    fake.body("GET", ISVC_CONFIG)["data"]["deploy"] = deploy
    fake.get(FEATURES, recorded("config-features.json"))
    results = run_doctor(fake, tmp_path)
    assert results["KServe deployment mode"].ok is ok and text in results["KServe deployment mode"].detail
    if "RawDeployment" in deploy:  # Standard mode: no Knative flags needed
        assert results["Knative feature flags"].ok


def test_no_deploy_key_is_kserves_default_standard(fake, tmp_path):
    del fake.body("GET", ISVC_CONFIG)["data"]["deploy"]
    results = run_doctor(fake, tmp_path)
    assert results["KServe deployment mode"].ok and "no deploy key" in results["KServe deployment mode"].detail
    assert results["Knative feature flags"].detail == "not needed (Standard mode)"


def test_kserve_config_in_the_kubeflow_namespace(fake, tmp_path):
    body = fake.routes.pop(("GET", ISVC_CONFIG))[1]
    fake.get("/api/v1/namespaces/kubeflow/configmaps/inferenceservice-config", body)
    assert "kubeflow/inferenceservice-config" in run_doctor(fake, tmp_path)["KServe deployment mode"].detail


def test_secret_keys_missing_or_placeholders(fake, tmp_path):
    set_secret(fake, AWS_ACCESS_KEY_ID="REPLACE_ME", AWS_SECRET_ACCESS_KEY="x", EMOFLOW_S3_ENDPOINT="m:9000")
    result = run_doctor(fake, tmp_path)["S3 secret"]
    assert not result.ok
    assert "['S3_USE_HTTPS', 'AWS_REGION']" in result.detail and "REPLACE_ME: ['AWS_ACCESS_KEY_ID']" in result.detail
    assert "create secret generic emoflow-s3" in result.fix


def test_missing_namespace_account_and_secret(fake, tmp_path):
    for path in (SECRET, "/api/v1/namespaces/kubeflow/serviceaccounts/emoflow-s3"):
        del fake.routes[("GET", path)]
    results = run_doctor(fake, tmp_path)
    assert not results["S3 secret"].ok and "secrets \"emoflow-s3\" not found" in results["S3 secret"].detail
    assert not results["predictor service account"].ok
    assert results["pipeline service account"].ok
    del fake.routes[("GET", "/api/v1/namespaces/kubeflow")]
    result = run_doctor(fake, tmp_path)["run namespace"]
    assert not result.ok and "install Kubeflow Pipelines" in result.fix


def test_namespace_kserves_webhook_skips(fake, tmp_path):
    fake.body("GET", "/api/v1/namespaces/kubeflow")["metadata"]["labels"]["control-plane"] = "kubeflow"
    result = run_doctor(fake, tmp_path)["run namespace"]
    assert not result.ok and "labelled control-plane=kubeflow" in result.detail
    assert "starts without its model" in result.detail


def test_predictor_account_must_list_the_secret(fake, tmp_path):
    fake.body("GET", "/api/v1/namespaces/kubeflow/serviceaccounts/emoflow-s3")["secrets"] = []
    result = run_doctor(fake, tmp_path)["predictor service account"]
    assert not result.ok and "does not list Secret emoflow-s3" in result.detail


def test_rbac_reviews_as_the_run_account(fake, tmp_path):
    fake.allow = lambda user, attrs: not (attrs.get("group") == "serving.kserve.io" and attrs["verb"] in ("create", "delete"))
    result = run_doctor(fake, tmp_path)["RBAC"]
    assert not result.ok
    assert result.detail.startswith(f"{RUNNER} may not: create inferenceservices.serving.kserve.io, "
                                    "delete inferenceservices.serving.kserve.io")
    reviews = [r for r in fake.requests if r["path"].endswith("selfsubjectaccessreviews")]
    assert reviews and all(r["headers"].get("Impersonate-User") == RUNNER for r in reviews)
    assert {(r["body"]["spec"]["resourceAttributes"]["namespace"]) for r in reviews} == {"kubeflow"}
    assert "manifests/overlays/standalone" in result.fix


def test_rbac_falls_back_to_subject_access_review(fake, tmp_path):
    fake.impersonation_forbidden = True
    fake.allow = lambda user, attrs: user == RUNNER
    result = run_doctor(fake, tmp_path)["RBAC"]
    assert result.ok and "SubjectAccessReview for" in result.detail
    sar = [r for r in fake.requests if r["path"].endswith("/subjectaccessreviews")]
    assert sar and sar[0]["body"]["spec"]["user"] == RUNNER
    assert "system:serviceaccounts:kubeflow" in sar[0]["body"]["spec"]["groups"]


def test_rbac_cannot_be_reviewed_at_all(fake, tmp_path):
    fake.impersonation_forbidden = fake.subject_access_review_forbidden = True
    result = run_doctor(fake, tmp_path)["RBAC"]
    assert not result.ok and f"cannot review the rights of {RUNNER}" in result.detail
    assert 'cannot create resource "subjectaccessreviews"' in result.detail and "cluster admin" in result.fix


def test_multi_user_profile(tmp_path):
    with FakeCluster() as fake:
        fake.healthy(namespace="team-a", runner="default-editor")
        results = run_doctor(fake, tmp_path, mode="multi-user", namespace="team-a")
        assert results["KFP API"].ok and "(multi-user)" in results["KFP API"].detail
        assert results["pipeline service account"].detail == "team-a/default-editor"
        assert results["RBAC"].ok and "system:serviceaccount:team-a:default-editor" in results["RBAC"].detail
        results = run_doctor(fake, tmp_path, mode="standalone")  # standalone: kubeflow is not there
        assert not results["KFP API"].ok and "rerun with --mode multi-user" in results["KFP API"].fix
        assert not results["run namespace"].ok


@pytest.mark.parametrize("options, text", [
    ({"tolerations": []}, "gpu-h200-0 (8 GPU): taint nvidia.com/gpu=present:NoSchedule not tolerated"),
    ({"node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
     "label nvidia.com/gpu.product=NVIDIA-H200 (selector wants NVIDIA-A100-SXM4-80GB)"),
    ({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]},
     "not tolerated"),
])
def test_gpu_nodes_that_do_not_fit(fake, tmp_path, options, text):
    result = run_doctor(fake, tmp_path, **options)["GPU nodes"]
    assert not result.ok and text in result.detail and "--node-selector" in result.fix


def test_gpu_fix_names_the_tolerations_to_pass(fake, tmp_path):
    fix = run_doctor(fake, tmp_path, tolerations=[])["GPU nodes"].fix
    suggested = json.loads(fix.split("--tolerations '")[1].rstrip("'"))
    assert suggested == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert run_doctor(fake, tmp_path, tolerations=suggested)["GPU nodes"].ok


def test_gpu_nodes_equal_toleration_and_product_selector_fit(fake, tmp_path):
    result = run_doctor(fake, tmp_path, node_selector={"nvidia.com/gpu.product": "NVIDIA-H200"},
                        tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}])["GPU nodes"]
    assert result.ok


def test_gpu_count_larger_than_a_node(fake, tmp_path):
    result = run_doctor(fake, tmp_path, gpu_count="16")["GPU nodes"]
    assert not result.ok and "8 allocatable nvidia.com/gpu < gpu_count 16" in result.detail
    assert run_doctor(fake, tmp_path, gpu_count="8")["GPU nodes"].ok


def test_no_gpu_node_at_all(fake, tmp_path):
    nodes = fake.body("GET", "/api/v1/nodes")
    nodes["items"] = [n for n in nodes["items"] if n["metadata"]["name"] == "cpu-0"]
    result = run_doctor(fake, tmp_path)["GPU nodes"]
    assert not result.ok and "no node has allocatable nvidia.com/gpu" in result.detail
    assert run_doctor(fake, tmp_path, gpu_count="0")["GPU nodes"].ok


def test_missing_prometheus_operator_crd(fake, tmp_path):
    fake.get(CRD + "podmonitors.monitoring.coreos.com", recorded("status-404-crd.json"), 404)
    results = [r for r in run_doctor(fake, tmp_path)["_all"] if r.name == "Prometheus Operator CRD"]
    assert [r.ok for r in results] == [False, True]
    assert "podmonitors.monitoring.coreos.com" in results[0].detail and "Prometheus Operator" in results[0].fix


# --------------------------------------------------------------------------- the command and its exit code


def test_cli_exit_codes(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    fake.get(CRD + "prometheusrules.monitoring.coreos.com", recorded("status-404-crd.json"), 404)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  Prometheus Operator CRD" in out and "      fix: install the Prometheus Operator" in out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("14 checks, ") and "failed: " in last and "Prometheus Operator CRD" in last
    assert main(["doctor", "--mode", "multi-user"]) == 2
    assert "--namespace is required in multi-user mode" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--tolerations", '{"key": "x"}'])
    assert exc.value.code == 2 and "--tolerations must be a JSON list" in capsys.readouterr().err
    assert main(["doctor", "--tolerations", '[{"operator": "Equal"}]']) == 2
    assert "an empty key needs operator Exists" in capsys.readouterr().err
    assert main(["doctor", "--tolerations", '[{"key": "a", "opertor": "Exists"}]']) == 2
    assert "tolerations: item 0 has unknown Toleration fields ['opertor']" in capsys.readouterr().err
    assert main(["doctor", "--node-selector", '{"nvidia.com/gpu.present": true}']) == 2
    assert "node_selector: labels must map strings to strings" in capsys.readouterr().err


def test_unreachable_api_server_fails_every_cluster_check(tmp_path, monkeypatch, capsys):
    with FakeCluster() as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    # the server is gone: its port refuses connections
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    for name in ("KFP API", "KServe CRD", "run namespace", "GPU nodes", "Prometheus Operator CRD"):
        assert f"FAIL  {name}" in out
    assert "cannot reach the Kubernetes API" in out


@pytest.mark.skipif(not MIRROR_API, reason="needs emoflow.assets mirror support (assets_for, read_manifest)")
def test_cli_exit_zero_on_a_ready_cluster(fake, tmp_path, monkeypatch, capsys, s3_server):
    bucket = s3_server.new_bucket()
    set_secret(fake, AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
               EMOFLOW_S3_ENDPOINT=s3_server.endpoint, S3_USE_HTTPS="0", AWS_REGION="us-east-1")
    push_manifests(s3_server, bucket, needed_assets("tiny"))
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    assert main(["doctor", "--store", f"s3://{bucket}", "--assets", f"s3://{bucket}/assets"]) == 0
    assert "ready for `emoflow submit`" in capsys.readouterr().out


# --------------------------------------------------------------------------- store and mirror on SeaweedFS


def needed_assets(preset: str) -> list[str]:
    from emoflow.models.registry import load_preset

    return sorted(assets.assets_for(load_preset("a1", preset)))


def push_manifests(s3_server, bucket: str, names: list[str]) -> None:
    """A mirror holding ``names``: a one-file asset each, with its manifest (the format push writes)."""
    import hashlib
    import io

    client = s3_server.client()
    for name in names:
        data = b"{}"
        manifest = {"format": assets.MANIFEST_FORMAT, "asset": name, "about": "test",
                    "files": {"config.json": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}
        body = json.dumps(manifest).encode()
        client.put_object(bucket, f"assets/{name}/{assets.MANIFEST}", io.BytesIO(body), len(body))
        client.put_object(bucket, f"assets/{name}/model/config.json", io.BytesIO(data), len(data))


def test_store_reached_with_the_secrets_credentials(fake, tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    good = dict(AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
                EMOFLOW_S3_ENDPOINT=s3_server.endpoint, S3_USE_HTTPS="0", AWS_REGION="us-east-1")
    set_secret(fake, **good)
    result = run_doctor(fake, tmp_path, store=f"s3://{bucket}")["store"]
    assert result.ok and "0 registry objects" in result.detail
    result = run_doctor(fake, tmp_path, store="s3://no-such-bucket-doctor")["store"]
    assert not result.ok and "does not exist" in result.detail
    set_secret(fake, **{**good, "AWS_SECRET_ACCESS_KEY": "wrong-" + s3_server.secret_key})
    result = run_doctor(fake, tmp_path, store=f"s3://{bucket}")["store"]
    assert not result.ok and "authentication failed" in result.detail and "keys in the Secret" in result.fix
    set_secret(fake, **{**good, "EMOFLOW_S3_ENDPOINT": "minio-service.kubeflow:9000"})
    result = run_doctor(fake, tmp_path, store=f"s3://{bucket}", s3_endpoint=s3_server.endpoint)["store"]
    assert result.ok  # the in-cluster endpoint, reached through --s3-endpoint


@pytest.mark.skipif(not MIRROR_API, reason="needs emoflow.assets mirror support (assets_for, read_manifest)")
def test_asset_mirror_holds_what_the_preset_needs(fake, tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    set_secret(fake, AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
               EMOFLOW_S3_ENDPOINT=s3_server.endpoint, S3_USE_HTTPS="0", AWS_REGION="us-east-1")
    needed = needed_assets("tiny")
    assert needed, "the tiny preset loads a tokenizer asset"
    mirror = f"s3://{bucket}/assets"
    result = run_doctor(fake, tmp_path, assets=mirror)["asset mirror"]
    assert not result.ok and f"has no manifest for {', '.join(needed)}" in result.detail
    assert result.fix == f"emoflow assets push {mirror} {' '.join(needed)}"
    push_manifests(s3_server, bucket, needed)
    result = run_doctor(fake, tmp_path, assets=mirror)["asset mirror"]
    assert result.ok and all(n in result.detail for n in needed)
    result = run_doctor(fake, tmp_path)["asset mirror"]
    assert not result.ok and "no --assets mirror" in result.detail


def test_asset_check_without_mirror_support_says_so(fake, tmp_path, monkeypatch):
    monkeypatch.delattr(assets, "assets_for", raising=False)
    result = run_doctor(fake, tmp_path, assets="s3://b/assets")["asset mirror"]
    assert not result.ok and "no mirror support" in result.detail
