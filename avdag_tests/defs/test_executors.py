"""AVDAG_EXECUTOR: in process by default; Celery or Kubernetes only on shared state, refused at load otherwise.

Plain `Settings` objects, no services: what the jobs get, and the errors that say what to set.
"""

import os
import subprocess
import sys

import dagster as dg
import pytest

from avdag.defs.pipeline.executors import executor_for
from avdag.defs.pipeline.pools import GPU_POOL
from avdag.settings import Settings, SettingsError

SHARED = {"AVDAG_STATE_URL": "s3://avdag/state", "AVDAG_DB_URL": "postgresql://avdag@db:5432/avdag"}
CELERY = {**SHARED, "AVDAG_EXECUTOR": "celery", "AVDAG_CELERY_BROKER_URL": "redis://broker:6379/0"}
QUEUE_TAG = "dagster-celery/queue"


def settings(**env: str) -> Settings:
    return Settings.from_env({"AVDAG_HOME": "/srv/avdag", **env})


def test_in_process_by_default_and_on_local_state():
    assert settings().executor == "in_process"
    assert executor_for(settings()) is dg.in_process_executor


def test_every_job_and_the_ui_materializations_run_in_process_by_default():
    from avdag.definitions import defs

    jobs = [defs.resolve_job_def(name) for name in ("clip_batch_pipeline", "training_pipeline", "reporting_pipeline")]
    jobs.append(defs.resolve_implicit_global_asset_job_def())
    assert {job.name: job.executor_def.name for job in jobs} == dict.fromkeys([job.name for job in jobs], "in_process")


def test_the_gpu_pool_steps_and_only_they_are_routed_to_gpu_queues_training_to_its_own():
    from avdag.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    queues = {node.name: node.tags.get(QUEUE_TAG) for node in job.nodes}
    pools = {node.name: node.definition.pool for node in job.nodes}
    assert {name for name, pool in pools.items() if pool == GPU_POOL} == {
        "baseline_captions",
        "finetuned_captions",
        "sft_checkpoint",
        "candidate_evaluation",
    }
    expected = {name: "gpu" if pool == GPU_POOL else None for name, pool in pools.items()}
    assert queues == {**expected, "sft_checkpoint": "training"}


def test_celery_gets_the_broker_the_backend_and_the_cpu_queue_from_the_settings():
    executor = executor_for(settings(**CELERY, AVDAG_CELERY_QUEUE="avdag-cpu"))
    assert executor.name == "celery"
    config = executor.config_schema.resolve_config({}).value["config"]
    assert config["broker"] == config["backend"] == "redis://broker:6379/0"  # Redis keeps the results too
    assert config["config_source"] == {"task_default_queue": "avdag-cpu"}
    assert settings(**CELERY).celery_queue == "dagster"  # dagster-celery's default queue
    rpc = executor_for(settings(**CELERY, AVDAG_CELERY_BACKEND_URL="rpc://"))
    assert rpc.config_schema.resolve_config({}).value["config"]["backend"] == "rpc://"


@pytest.mark.parametrize("executor", ["celery", "k8s"])
def test_local_state_is_refused_with_what_to_set(executor):
    env = {**CELERY, "AVDAG_EXECUTOR": executor}
    with pytest.raises(SettingsError, match=r"set AVDAG_STATE_URL=s3://") as local_state:
        executor_for(settings(**{**env, "AVDAG_STATE_URL": "/mnt/avdag"}))
    assert "AVDAG_DB_URL" not in str(local_state.value)
    with pytest.raises(SettingsError, match=r"set AVDAG_DB_URL=postgresql://") as sqlite:
        executor_for(settings(**{**env, "AVDAG_DB_URL": "sqlite:////srv/avdag.sqlite"}))
    assert "AVDAG_STATE_URL" not in str(sqlite.value)
    with pytest.raises(SettingsError) as both:
        executor_for(settings(AVDAG_EXECUTOR=executor, AVDAG_CELERY_BROKER_URL="redis://broker:6379/0"))
    message = str(both.value)
    assert f"AVDAG_EXECUTOR={executor}" in message
    assert "AVDAG_STATE_URL=s3://" in message and "AVDAG_DB_URL=postgresql://" in message


def test_a_local_folder_declared_shared_is_accepted_and_sqlite_still_is_not():
    """`AVDAG_STATE_IS_SHARED=1`: the user says every machine mounts that folder (NFS), which avdag cannot check."""
    shared_mount = {**CELERY, "AVDAG_STATE_URL": "/mnt/nfs/avdag", "AVDAG_STATE_IS_SHARED": "1"}
    assert executor_for(settings(**shared_mount)).name == "celery"
    with pytest.raises(SettingsError, match=r"set AVDAG_DB_URL=postgresql://") as sqlite:
        executor_for(settings(**{**shared_mount, "AVDAG_DB_URL": "sqlite:////mnt/nfs/avdag.sqlite"}))
    assert "AVDAG_STATE_URL" not in str(sqlite.value)


def test_celery_without_a_broker_is_refused():
    with pytest.raises(SettingsError, match="AVDAG_CELERY_BROKER_URL is not set"):
        executor_for(settings(**SHARED, AVDAG_EXECUTOR="celery"))


@pytest.mark.parametrize(("executor", "module"), [("celery", "dagster_celery"), ("k8s", "dagster_k8s")])
def test_a_missing_integration_names_the_extra_to_install(monkeypatch, executor, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError, installed or not
    with pytest.raises(SettingsError, match=rf"pip install 'avdag\[{executor}\]'"):
        executor_for(settings(**{**CELERY, "AVDAG_EXECUTOR": executor}))


def test_an_unknown_executor_names_the_choices():
    with pytest.raises(SettingsError, match="AVDAG_EXECUTOR='dask': expected one of in_process, celery, k8s"):
        settings(AVDAG_EXECUTOR="dask")


def test_the_definitions_refuse_to_load_on_local_state(tmp_path):
    """What `dagster dev`, the daemon's code server and a Celery worker see: the import itself fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVDAG_")}
    env.update(AVDAG_HOME=str(tmp_path), AVDAG_EXECUTOR="celery", AVDAG_CELERY_BROKER_URL="redis://broker:6379/0")
    done = subprocess.run([sys.executable, "-c", "import avdag.definitions"], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "SettingsError: AVDAG_EXECUTOR=celery" in done.stderr
    assert "set AVDAG_STATE_URL=s3://" in done.stderr and "set AVDAG_DB_URL=postgresql://" in done.stderr
