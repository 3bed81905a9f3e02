"""The training DAG: ingest → transcribe → features → (train → evaluate) per architecture →
register (winner) → deploy.

With ``fan_out_folds=True`` each architecture's training is split into one task per fold
(plan_folds → ParallelFor(folds){train_fold} → finalize), so a cluster trains architectures × folds
tasks in parallel on GPU nodes; finalize merges the folds' predictions and does the final fit, and
gives evaluate/register the same model and predictions as the one-task train.

Caching: KFP's cache key is the input parameter values, the ids of the input artifacts, the image
and the command (backend/src/v2/cacheutils/cache.go) — not the content of the data. The
fingerprint step (never cached) hashes the manifest bytes (audio is content-addressed in it), each
architecture's resolved preset and the feature config; features and training take that hash as
the ``cache_key`` parameter, so changed data or configuration always changes their cache key.

Compile with ``emoflow compile`` (or ``python -m pipelines.training out.yaml``) and upload the YAML
in the Kubeflow UI; run it on this machine with ``emoflow run``.
"""


from kfp import dsl, kubernetes

from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.features.component import features
from components.finalize.component import finalize
from components.fingerprint.component import fingerprint
from components.ingest.component import ingest
from components.plan_folds.component import plan_folds
from components.register.component import register
from components.train.component import train
from components.train_fold.component import train_fold
from components.transcribe.component import transcribe

PIPELINE_NAME = "emoflow-training"
S3_SECRET = "emoflow-s3"
# the emoflow-s3 Secret (manifests/base/s3-secret.yaml): credentials and where the store is
S3_SECRET_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EMOFLOW_S3_ENDPOINT",
                                 "S3_USE_HTTPS", "AWS_REGION")}
ARCH_PARALLELISM = 4  # architectures trained at once
FOLD_PARALLELISM = 5  # folds per architecture trained at once (fan-out): up to 4 × 5 GPU tasks
DEFAULT_FEATURES = {"n_mels": 128, "win_ms": 25, "hop_ms": 10, "sample_rate": 16000, "normalize": "segment"}


def _storage_task(task: dsl.PipelineTask, *, cluster: bool, retries: int = 2,
                  timeout_s: int = 4 * 3600) -> dsl.PipelineTask:
    """Retries and S3 credentials (from a Kubernetes secret, as env) for steps that touch the store.

    Locally (kfp.local honours retries and their back-off) a failure is reported at once instead."""
    if cluster:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
        kubernetes.set_timeout(task, timeout_s)
        kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_KEYS)
    return task


def _gpu_task(task: dsl.PipelineTask, *, cluster: bool, accelerator_type, gpu_count, node_selector,
              tolerations) -> dsl.PipelineTask:
    """A training task: one GPU, memory/CPU limits, GPU node placement, retries, a long timeout."""
    if cluster:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpu_count)
    else:  # kfp.local ignores accelerators and cannot resolve parameters inside ParallelFor here
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_memory_limit("32G").set_cpu_limit("8")
    _storage_task(task, cluster=cluster, retries=3, timeout_s=24 * 3600)
    if cluster:
        kubernetes.add_node_selector_json(task, node_selector)
        kubernetes.add_toleration_json(task, tolerations)
    return task


def build_pipeline(*, cluster: bool = True):
    """The pipeline function; `cluster=False` drops Kubernetes-only settings for kfp.local."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Multimodal (speech + text) emotion recognition: ingest, transcribe, features, "
        "LOSO training per architecture, evaluation, registration of the winner and deployment.",
    )
    def training_pipeline(
        corpus: str = "demo",
        source: str = "",
        store: str = "s3://emoflow",
        architectures: list = ["a1"],
        preset: str = "tiny",
        epochs: int = 0,
        fold_scheme: str = "logo",
        n_folds: int = 0,
        seed: int = 0,
        fan_out_folds: bool = False,
        transcribe_backend: str = "auto",
        feature_config: dict = DEFAULT_FEATURES,
        ingest_options: dict = {},
        model_name: str = "emoflow",
        alias: str = "production",
        winner_metric: str = "ua",
        promote_margin: float = 0.0,
        deploy_target: str = "kserve",
        serve_port: int = 8080,
        namespace: str = "emoflow",
        isvc_name: str = "emoflow",
        accelerator_type: str = "nvidia.com/gpu",
        gpu_count: int = 1,
        node_selector: dict = {},
        tolerations: list = [],
        service_account: str = "emoflow-s3",
        canary_traffic_percent: int = -1,
    ) -> dict:
        """Parameters:
        corpus: corpus adapter (demo, iemocap, meld, mosei, ravdess, cremad, emodb, csv)
        source: corpus location: a folder or s3://bucket/prefix (empty for demo: generated)
        store: artifact store URI (s3://bucket/prefix on a cluster)
        architectures: architectures to train, one branch each (a1, a2, a3, a4)
        preset: preset name per architecture (tiny, paper, offline) or a YAML path
        epochs: override the preset's epochs (0 = preset)
        fold_scheme: logo (leave one session out), speaker_groups, official
        n_folds: folds for speaker_groups (0 = one per group)
        alias: production (register and promote) or candidate (promote only if better)
        deploy_target: kserve (InferenceService) or local (127.0.0.1) or none
        accelerator_type / gpu_count / node_selector / tolerations: GPU placement of training
        """
        ing = ingest(corpus=corpus, source=source, store=store, options=ingest_options)
        ing.set_caching_options(False)  # reads external data: never reuse a stale manifest
        _storage_task(ing, cluster=cluster)
        tr = transcribe(manifest=ing.outputs["manifest"], backend=transcribe_backend, store=store)
        _storage_task(tr, cluster=cluster)
        fp = fingerprint(
            manifest=tr.outputs["transcribed"], architectures=architectures, preset=preset,
            feature_config=feature_config, epochs=epochs, fold_scheme=fold_scheme, n_folds=n_folds, seed=seed,
        )
        fp.set_caching_options(False)  # cheap, and it is what makes the others' cache keys honest
        _storage_task(fp, cluster=cluster, timeout_s=1800)
        feat = features(manifest=tr.outputs["transcribed"], store=store, feature_config=feature_config,
                        cache_key=fp.output)
        _storage_task(feat, cluster=cluster)
        manifest = feat.outputs["featurized"]
        common = dict(store=store, preset=preset, epochs=epochs, fold_scheme=fold_scheme, n_folds=n_folds,
                      seed=seed, cache_key=fp.output)
        gpu = dict(cluster=cluster, accelerator_type=accelerator_type, gpu_count=gpu_count,
                   node_selector=node_selector, tolerations=tolerations)

        def register_winner(models, evaluations) -> dsl.PipelineTask:
            reg = register(
                models=models, evaluations=evaluations, store=store, model_name=model_name, alias=alias,
                winner_metric=winner_metric, promote_margin=promote_margin,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            _storage_task(reg, cluster=cluster)
            return reg.set_caching_options(False)

        # dsl.Collected cannot take a dsl.OneOf, so each path has its own evaluate + register and
        # only the registration (a parameter) is joined with dsl.OneOf. The default path comes
        # first, so its tasks keep the plain names (train, evaluate, register).
        with dsl.If(fan_out_folds == False, name="one-task-per-architecture"):  # noqa: E712 (pipeline expression)
            with dsl.ParallelFor(architectures, parallelism=ARCH_PARALLELISM) as arch:
                fit = train(manifest=manifest, arch=arch, feature_config=feature_config, **common)
                _gpu_task(fit, **gpu)
                ev = evaluate(predictions=fit.outputs["predictions"], corpus=corpus)
            reg_arch = register_winner(dsl.Collected(fit.outputs["model"]), dsl.Collected(ev.outputs["evaluation"]))
        with dsl.Else(name="fold-fan-out"):
            with dsl.ParallelFor(architectures, parallelism=ARCH_PARALLELISM) as arch:
                plan = plan_folds(manifest=manifest, arch=arch, fold_scheme=fold_scheme, n_folds=n_folds, seed=seed)
                _storage_task(plan, cluster=cluster, timeout_s=1800)
                # the items carry the architecture too: kfp.local 2.17 substitutes the inner loop's item
                # for every loop-item input inside a nested loop, the outer `arch` included
                with dsl.ParallelFor(plan.output, parallelism=FOLD_PARALLELISM) as item:
                    part = train_fold(manifest=manifest, arch=item.arch, fold=item.fold, **common)
                    _gpu_task(part, **gpu)
                fin = finalize(manifest=manifest, fold_predictions=dsl.Collected(part.outputs["predictions"]),
                               arch=arch, feature_config=feature_config, **common)
                _gpu_task(fin, **gpu)
                ev_folds = evaluate(predictions=fin.outputs["predictions"], corpus=corpus)
            reg_folds = register_winner(dsl.Collected(fin.outputs["model"]),
                                        dsl.Collected(ev_folds.outputs["evaluation"]))
        registration = dsl.OneOf(reg_arch.output, reg_folds.output)
        with dsl.If(deploy_target != "none"):
            dep = deploy(
                registration=registration, store=store, target=deploy_target, port=serve_port,
                namespace=namespace, isvc_name=isvc_name, gpu=gpu_count, node_selector=node_selector,
                tolerations=tolerations, service_account=service_account,
                canary_traffic_percent=canary_traffic_percent,
            )
            dep.set_caching_options(False)
            if cluster:
                kubernetes.set_timeout(dep, 1800)
                kubernetes.use_secret_as_env(dep, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_KEYS)
        return registration

    return training_pipeline


def pipeline_params() -> set[str]:
    """Names of the pipeline's parameters (what `emoflow run` may pass)."""
    return set(build_pipeline(cluster=False).component_spec.inputs or {})


def compile_pipeline(path: str, *, cluster: bool = True) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(cluster=cluster), package_path=path)
    return path


if __name__ == "__main__":
    import sys

    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else "emoflow-training.yaml"))
