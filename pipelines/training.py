"""The training DAG: ingest → transcribe → features → (train → evaluate) per architecture →
register (winner) → deploy.

With ``fan_out_folds=True`` each architecture's training is split into one task per fold
(plan_folds → ParallelFor(folds){train_fold} → finalize), so a cluster trains architectures × folds
tasks in parallel on GPU nodes; finalize merges the folds' predictions and does the final fit, and
gives evaluate/register the same model and predictions as the one-task train.

Reuse: KFP's cache key holds the ids of a task's input artifacts (backend/src/v2/cacheutils/cache.go),
which are new in every run because ingest is never cached, so on a cluster KFP's cache never hits.
The steps therefore reuse their own results from the store, keyed by content
(``emoflow.storage.results``): ASR, log-mel and encoder embeddings per utterance, each training fold
and each final fit. An identical rerun does no encoder pass and no training epoch, on kfp.local and
on a cluster alike; ``reuse_results: false`` recomputes. The fingerprint step (never cached) still
hashes the manifest, each architecture's resolved preset and the feature config into ``cache_key``,
so a run's tasks carry the identity of their data and configuration.

Parameters: every pipeline parameter, its type, default and description come from the run
configuration (``emoflow.runconfig.PARAMS``); the pipeline function's signature is built from it.
Pod-spec fields that take a parameter (accelerator type and count) take STRING parameters: the KFP
backend driver resolves them as strings (see tests/pipelines/test_pipeline_compile.py).

Images: every task's image is resolved when the pipeline is compiled (``emoflow.images``:
``$EMOFLOW_IMAGE_REGISTRY``, ``$EMOFLOW_IMAGE_TAG``), and so is the ``serving_image`` default;
image pull secrets (``$EMOFLOW_IMAGE_PULL_SECRETS`` or ``emoflow compile --image-pull-secret``)
are set on every task pod as constants (kfp-kubernetes takes one name per entry, so a list
parameter cannot feed them) and are the default of the ``image_pull_secrets`` parameter that the
InferenceService gets.

Compile with ``emoflow compile`` (or ``python -m pipelines.training out.yaml``) and upload the YAML
in the Kubeflow UI; run it on this machine with ``emoflow run``.
"""


import inspect
from types import SimpleNamespace

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
from emoflow import images, runconfig

PIPELINE_NAME = "emoflow-training"
S3_SECRET = "emoflow-s3"
# the emoflow-s3 Secret (manifests/base/s3-secret.yaml): credentials and where the store is
S3_SECRET_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EMOFLOW_S3_ENDPOINT",
                                 "S3_USE_HTTPS", "AWS_REGION")}
ARCH_PARALLELISM = 4  # architectures trained at once
FOLD_PARALLELISM = 5  # folds per architecture trained at once (fan-out): up to 4 × 5 GPU tasks
# the deploy pod outlives the longest readiness wait a run may ask for
DEPLOY_POD_DEADLINE_S = runconfig.MAX_DEPLOY_TIMEOUT_S + 1800


def _task(task: dsl.PipelineTask, *, cluster: bool, pull_secrets: list[str]) -> dsl.PipelineTask:
    """Every task: its emoflow image resolved with the settings at compile time (a component's
    ``base_image`` was resolved when its module was imported), and the image pull secrets."""
    if cluster:
        ref = task.container_spec.image
        name = ref.rsplit("/", 1)[-1].split(":", 1)[0].removeprefix(images.PREFIX)
        task.set_container_image(images.image(name))
        if pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(pull_secrets))
    return task


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
    """A training task: GPUs, memory/CPU limits, GPU node placement, retries, a long timeout.

    `accelerator_type` and `gpu_count` are STRING parameters: the backend driver reads pod-spec
    placeholders as strings."""
    if cluster:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpu_count)
        # kfp 2.17's set_accelerator_* put the placeholders in the pod spec but do not register the
        # channels, so the loop/condition DAGs around the task would not receive them and the driver
        # fails with "parent DAG does not have input parameter pipelinechannel--gpu_count"
        task.register_pipeline_channels([accelerator_type, gpu_count])
    else:  # kfp.local ignores accelerators and cannot resolve parameters inside ParallelFor here
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_memory_limit("32G").set_cpu_limit("8")
    _storage_task(task, cluster=cluster, retries=3, timeout_s=24 * 3600)
    if cluster:
        kubernetes.add_node_selector_json(task, node_selector)
        kubernetes.add_toleration_json(task, tolerations)
    return task


def pipeline_signature(defaults: dict) -> inspect.Signature:
    """The pipeline function's signature: one parameter per run parameter, typed, with its default."""
    return inspect.Signature(
        [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[p.name],
                           annotation=p.type) for p in runconfig.PARAMS],
        return_annotation=dict)


def build_pipeline(*, cluster: bool = True, image_pull_secrets: list[str] | None = None):
    """The pipeline function; `cluster=False` drops Kubernetes-only settings for kfp.local.

    Compile-time settings: task images and the `serving_image` default (emoflow.images), and the
    task pods' image pull secrets (`image_pull_secrets`, default $EMOFLOW_IMAGE_PULL_SECRETS)."""
    defaults = runconfig.defaults()
    if image_pull_secrets is not None:
        defaults["image_pull_secrets"] = list(image_pull_secrets)
    for name in ("serving_image", "image_pull_secrets"):  # the compile-time defaults
        defaults[name] = runconfig.BY_NAME[name].validate(defaults[name], "compile-time default")
    pull_secrets = list(defaults["image_pull_secrets"])
    signature = pipeline_signature(defaults)
    names = list(signature.parameters)

    def training_pipeline(*channels):
        p = SimpleNamespace(**dict(zip(names, channels)))  # KFP passes one channel per parameter, in order

        def task(t: dsl.PipelineTask) -> dsl.PipelineTask:
            return _task(t, cluster=cluster, pull_secrets=pull_secrets)

        ing = task(ingest(corpus=p.corpus, source=p.source, store=p.store, options=p.ingest_options))
        ing.set_caching_options(False)  # reads external data: never reuse a stale manifest
        _storage_task(ing, cluster=cluster)
        tr = task(transcribe(manifest=ing.outputs["manifest"], backend=p.transcribe_backend, store=p.store,
                             assets=p.assets, reuse_results=p.reuse_results))
        _storage_task(tr, cluster=cluster)
        fp = task(fingerprint(
            manifest=tr.outputs["transcribed"], architectures=p.architectures, preset=p.preset,
            feature_config=p.feature_config, epochs=p.epochs, fold_scheme=p.fold_scheme, n_folds=p.n_folds,
            seed=p.seed,
        ))
        fp.set_caching_options(False)  # cheap, and it is what makes the others' cache keys honest
        _storage_task(fp, cluster=cluster, timeout_s=1800)
        feat = task(features(manifest=tr.outputs["transcribed"], store=p.store, feature_config=p.feature_config,
                             cache_key=fp.output, assets=p.assets,
                             reuse_results=p.reuse_results))
        _storage_task(feat, cluster=cluster)
        manifest = feat.outputs["featurized"]
        validation = dict(validation=p.validation, validation_share=p.validation_share)
        common = dict(store=p.store, preset=p.preset, epochs=p.epochs, fold_scheme=p.fold_scheme,
                      n_folds=p.n_folds, seed=p.seed, cache_key=fp.output, assets=p.assets,
                      reuse_results=p.reuse_results, **validation)
        gpu = dict(cluster=cluster, accelerator_type=p.accelerator_type, gpu_count=p.gpu_count,
                   node_selector=p.node_selector, tolerations=p.tolerations)

        def register_winner(models, evaluations) -> dsl.PipelineTask:
            reg = task(register(
                models=models, evaluations=evaluations, store=p.store, model_name=p.model_name, alias=p.alias,
                winner_metric=p.winner_metric, promote_margin=p.promote_margin,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ))
            _storage_task(reg, cluster=cluster)
            return reg.set_caching_options(False)

        # dsl.Collected cannot take a dsl.OneOf, so each path has its own evaluate + register and
        # only the registration (a parameter) is joined with dsl.OneOf. The default path comes
        # first, so its tasks keep the plain names (train, evaluate, register).
        with dsl.If(p.fan_out_folds == False, name="one-task-per-architecture"):  # noqa: E712 (pipeline expression)
            with dsl.ParallelFor(p.architectures, parallelism=ARCH_PARALLELISM) as arch:
                fit = task(train(manifest=manifest, arch=arch, feature_config=p.feature_config, **common))
                _gpu_task(fit, **gpu)
                ev = task(evaluate(predictions=fit.outputs["predictions"], corpus=p.corpus))
            reg_arch = register_winner(dsl.Collected(fit.outputs["model"]), dsl.Collected(ev.outputs["evaluation"]))
        with dsl.Else(name="fold-fan-out"):
            with dsl.ParallelFor(p.architectures, parallelism=ARCH_PARALLELISM) as arch:
                plan = task(plan_folds(manifest=manifest, arch=arch, fold_scheme=p.fold_scheme, n_folds=p.n_folds,
                                       seed=p.seed, **validation))
                _storage_task(plan, cluster=cluster, timeout_s=1800)
                # the items carry the architecture too: kfp.local 2.17 substitutes the inner loop's item
                # for every loop-item input inside a nested loop, the outer `arch` included
                with dsl.ParallelFor(plan.output, parallelism=FOLD_PARALLELISM) as item:
                    part = task(train_fold(manifest=manifest, arch=item.arch, fold=item.fold, **common))
                    _gpu_task(part, **gpu)
                fin = task(finalize(manifest=manifest, fold_predictions=dsl.Collected(part.outputs["predictions"]),
                                    arch=arch, feature_config=p.feature_config, **common))
                _gpu_task(fin, **gpu)
                ev_folds = task(evaluate(predictions=fin.outputs["predictions"], corpus=p.corpus))
            reg_folds = register_winner(dsl.Collected(fin.outputs["model"]),
                                        dsl.Collected(ev_folds.outputs["evaluation"]))
        registration = dsl.OneOf(reg_arch.output, reg_folds.output)
        with dsl.If(p.deploy_target != "none"):
            dep = task(deploy(
                registration=registration, store=p.store, target=p.deploy_target, port=p.serve_port,
                namespace=p.namespace, isvc_name=p.isvc_name, gpu=p.gpu_count, node_selector=p.node_selector,
                tolerations=p.tolerations, service_account=p.service_account,
                canary_traffic_percent=p.canary_traffic_percent, image=p.serving_image,
                timeout_s=p.deploy_timeout_s, image_pull_secrets=p.image_pull_secrets, assets=p.assets,
            ))
            dep.set_caching_options(False)
            if cluster:
                kubernetes.set_timeout(dep, DEPLOY_POD_DEADLINE_S)
                kubernetes.use_secret_as_env(dep, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_KEYS)
        return registration

    training_pipeline.__signature__ = signature
    training_pipeline.__annotations__ = {**{n: q.annotation for n, q in signature.parameters.items()},
                                         "return": dict}
    training_pipeline.__doc__ = runconfig.docstring()
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="Multimodal (speech + text) emotion recognition: ingest, transcribe, features, "
        "LOSO training per architecture, evaluation, registration of the winner and deployment.",
    )(training_pipeline)


def compile_pipeline(path: str, *, cluster: bool = True, image_pull_secrets: list[str] | None = None) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(cluster=cluster, image_pull_secrets=image_pull_secrets),
                                package_path=path)
    return path


if __name__ == "__main__":
    import sys

    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else "emoflow-training.yaml"))
