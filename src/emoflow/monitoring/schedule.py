"""Scheduled retraining: a KFP recurring run of the training pipeline.

    emoflow schedule --host http://ml-pipeline-ui.kubeflow --pipeline pipeline.yaml \
        --cron "0 0 3 * * *" --experiment emoflow --job-name emoflow-nightly [--param key=value ...]

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

CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD = re.compile(r"^[0-9A-Za-z*/,?#\-]+$")


def retrain_params(params: dict | None = None) -> dict:
    """Pipeline parameters of a retraining run: the new model is a `candidate`, promoted to
    production only if it beats it (see emoflow.steps.register), unless the caller says otherwise."""
    return {"alias": "candidate", **(params or {})}


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
                    description: str | None = None, namespace: str | None = None):
    """Create a recurring run of the compiled pipeline through `client` (a kfp.Client).

    cron: 6 fields, seconds first, evaluated in UTC. Uses no_catchup=True, max_concurrency=1.
    Returns what client.create_recurring_run returns (a V2beta1RecurringRun).
    """
    cron = validate_cron(cron)
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
        params=retrain_params(params),
        pipeline_package_path=str(path),
        enabled=True,
    )
