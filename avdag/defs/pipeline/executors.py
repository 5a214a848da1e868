"""The executor every job runs with, chosen by `AVDAG_EXECUTOR`: one process per run, Celery workers, Kubernetes pods.

In process (the default) a run loads torch and the model once, on the machine that runs it. Celery and
Kubernetes run each step in a process of its own, on whichever machine takes it: a step finds what the
steps before it wrote only in the state store and the database, so both must be shared (S3, Postgres).
`executor_for` refuses to build one of them on local state and says what to set, rather than letting a
worker fail later on files that are on another machine; `AVDAG_STATE_IS_SHARED=1` declares a local path
to be a mount that every machine shares (NFS), which avdag cannot check.

Celery routes by queue: captioning carries `dagster-celery/queue: gpu` and training `... : training`
(see `pools.py`), for workers started with `-q gpu` / `-q training`; every other step goes to
`AVDAG_CELERY_QUEUE`.
The integrations are optional extras, imported only when selected.
"""

from __future__ import annotations

import importlib

import dagster as dg

from avdag.settings import Settings, SettingsError


def check_shared_state(settings: Settings) -> None:
    """Raise, naming what to set, when steps on other machines could not reach this one's state or database."""
    if settings.executor == "in_process":
        return
    problems = []
    if not settings.state_url.startswith("s3://") and not settings.state_is_shared:
        problems.append(
            f"AVDAG_STATE_URL is the local folder {settings.state_url}: set AVDAG_STATE_URL=s3://bucket/prefix, "
            "or AVDAG_STATE_IS_SHARED=1 if every machine mounts that same folder (NFS)"
        )
    if settings.db_url.startswith("sqlite:"):
        problems.append(
            f"AVDAG_DB_URL is the SQLite file {settings.db_url}: set AVDAG_DB_URL=postgresql://user@host:5432/avdag"
        )
    if settings.executor == "celery" and not settings.celery_broker_url:
        problems.append("AVDAG_CELERY_BROKER_URL is not set: set it to the workers' broker, e.g. redis://host:6379/0")
    if problems:
        raise SettingsError(
            f"AVDAG_EXECUTOR={settings.executor} runs steps in separate processes, possibly on other machines, "
            "which must all reach the same state and database:\n  " + "\n  ".join(problems)
        )


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """The executor `AVDAG_EXECUTOR` names, configured from the settings (after `check_shared_state`)."""
    check_shared_state(settings)
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "k8s":
        # Configured by the instance's K8sRunLauncher and the run config (README, "Running on many machines").
        return _integration("dagster_k8s", settings).k8s_job_executor
    return _integration("dagster_celery", settings).celery_executor.configured(
        {
            "broker": settings.celery_broker_url,
            # Redis keeps results as well as tasks; a RabbitMQ broker wants AVDAG_CELERY_BACKEND_URL=rpc://.
            "backend": settings.celery_backend_url or settings.celery_broker_url,
            "config_source": {"task_default_queue": settings.celery_queue},
        },
        name="celery",
    )


def _integration(module: str, settings: Settings):
    """The Dagster integration of an optional extra (named like the executor), or an error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SettingsError(
            f"AVDAG_EXECUTOR={settings.executor} needs {module}: pip install 'avdag[{settings.executor}]' ({error})"
        ) from None
