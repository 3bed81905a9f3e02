"""Scheduled retraining: a KFP recurring run of the training pipeline.

    emoflow schedule --host http://ml-pipeline-ui.kubeflow --pipeline pipeline.yaml \
        --cron "0 0 3 * * *" --config run.yaml [--param key=value ...] \
        [--namespace <profile namespace>] [--service-account <run's ServiceAccount>]

The run's parameters are required (a run-config YAML, see emoflow.runconfig, and/or --param): a
retraining never falls back to the pipeline's defaults (corpus=demo, synthetic data), so
``corpus`` and ``source`` must be given. The retraining registers a ``candidate`` unless ``alias``
says otherwise.

KFP cron expressions have SIX fields, seconds first:
``second minute hour day-of-month month day-of-week`` ("0 0 3 * * *" = every day at 03:00:00).
They are evaluated by the KFP ScheduledWorkflow controller in UTC. The recurring run is created
with ``no_catchup=True`` (runs missed while paused are not replayed) and ``max_concurrency=1``
(never two retrainings at once). Kubeflow UI equivalent: Experiments → Create recurring run →
Trigger type "Cron", tick "Allow editing cron expression", paste the same 6-field expression,
Maximum concurrent runs 1, untick "Catchup".
"""

from __future__ import annotations

import re
from pathlib import Path

from emoflow import runconfig

CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD = re.compile(r"^[0-9A-Za-z*/,?#\-]+$")
RETRAIN_REQUIRED = ("corpus", "source")  # the data: never the pipeline's demo default


def retrain_params(params: dict | None = None) -> dict:
    """Pipeline parameters of a retraining run, validated by the run config.

    The run's data must be given (RETRAIN_REQUIRED); the new model is a `candidate`, promoted to
    production only if it beats it (see emoflow.steps.register), unless the caller says otherwise."""
    params = runconfig.validate(params or {}, "retraining parameters")
    missing = [k for k in RETRAIN_REQUIRED if not params.get(k)]
    if missing:
        raise runconfig.RunConfigError(
            f"retraining needs the run's data: {' and '.join(missing)} not given (pass --config run.yaml "
            "with corpus and source, or --param corpus=... --param source=...); the pipeline's defaults "
            "(corpus=demo: synthetic data) are never used for retraining")
    return {"alias": "candidate", **params}


def kfp_client(host: str | None, *, token_file: str | None = None):
    """A kfp.Client. `token_file`: a bearer token read from this file on every request (a projected
    ServiceAccount token, which the kubelet rotates: what multi-user KFP authenticates in-cluster
    callers with; kfp 2.17's ServiceAccountTokenVolumeCredentials). Without it, kfp.Client's own
    defaults apply (in a pod with no host: the token at /var/run/secrets/kubeflow/pipelines/token)."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    if token_file and not Path(token_file).is_file():
        raise ValueError(f"KFP token file {token_file} does not exist")
    credentials = ServiceAccountTokenVolumeCredentials(path=token_file) if token_file else None
    return kfp.Client(host=host, credentials=credentials)


def validate_cron(cron: str) -> str:
    """Check a 6-field KFP cron expression (seconds first); return it normalised to single spaces."""
    if not isinstance(cron, str):
        raise ValueError(f"cron expression must be a string, got {type(cron).__name__}")
    fields = cron.split()
    if len(fields) != len(CRON_FIELDS):
        hint = " (a 5-field Unix cron? prepend the seconds field, e.g. '0 ' + yours)" if len(fields) == 5 else ""
        raise ValueError(
            f"KFP cron needs 6 fields ({' '.join(CRON_FIELDS)}), got {len(fields)} in {cron!r}{hint}; "
            "example: '0 0 3 * * *' = daily at 03:00:00 UTC")
    for name, value in zip(CRON_FIELDS, fields):
        if not _FIELD.match(value):
            raise ValueError(f"cron {name} field {value!r} has characters outside 0-9 A-Z * / , - ? #")
    return " ".join(fields)


def create_schedule(client, pipeline_package_path, cron: str, *, experiment: str = "emoflow",
                    job_name: str = "emoflow-retrain", params: dict | None = None,
                    description: str | None = None, namespace: str | None = None,
                    service_account: str | None = None):
    """Create a recurring run of the compiled pipeline through `client` (a kfp.Client).

    cron: 6 fields, seconds first, evaluated in UTC. Uses no_catchup=True, max_concurrency=1.
    params: the run's parameters (corpus and source required, see retrain_params).
    namespace: the KFP profile namespace (multi-user; the experiment, hence its runs, live there).
    service_account: the Kubernetes ServiceAccount the runs' pods use (KFP's default when None).
    Returns what client.create_recurring_run returns (a V2beta1RecurringRun).
    """
    cron = validate_cron(cron)
    params = retrain_params(params)
    path = Path(pipeline_package_path)
    if not path.is_file():
        raise ValueError(f"pipeline package {path} does not exist (compile it with `emoflow compile`)")
    if not job_name or not isinstance(job_name, str):
        raise ValueError(f"job name must be a non-empty string, got {job_name!r}")
    exp = client.create_experiment(name=experiment, namespace=namespace)
    return client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        description=description or f"emoflow retraining on cron '{cron}' (UTC)",
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=params,
        pipeline_package_path=str(path),
        enabled=True,
        service_account=service_account,
    )
