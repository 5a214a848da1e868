"""A three-step asset job on avdag's Celery executor, for `test_celery_execution.py`; Celery workers import it.

    prepared (default queue) -> on_gpu (the `gpu` pool, avdag's GPU_STEP_TAGS) -> summarized (default queue)

Built from `Settings.from_env()` with avdag's own `executor_for` and JSON IO manager (values pass between
workers through the state store, on S3). Each step records where it ran as output metadata: its pid, host
and the `CELERY_SMOKE_WORKER` name the test gives each worker's environment. `launch()` runs the job as a
run worker would: steps go to the broker, this process only orchestrates.
"""

from __future__ import annotations

import json
import os
import socket

import dagster as dg

from avdag.defs.pipeline.executors import executor_for
from avdag.defs.pipeline.pools import GPU_POOL, GPU_STEP_TAGS
from avdag.resources.io_managers import JsonIOManager
from avdag.settings import Settings

JOB = "celery_smoke"
WORKER_VAR = "CELERY_SMOKE_WORKER"


def _ran_here(name: str) -> dg.Output[dict]:
    where = {"step": name, "pid": os.getpid(), "host": socket.gethostname(), "worker": os.environ.get(WORKER_VAR, "")}
    print(f"{name} ran in {where}", flush=True)  # the compute log, on S3
    return dg.Output(where, metadata=where)


@dg.asset
def prepared() -> dg.Output[dict]:
    return _ran_here("prepared")


@dg.asset(pool=GPU_POOL, op_tags=GPU_STEP_TAGS)
def on_gpu(prepared: dict) -> dg.Output[dict]:
    return _ran_here("on_gpu")


@dg.asset
def summarized(prepared: dict, on_gpu: dict) -> dg.Output[dict]:
    return _ran_here("summarized")


_settings = Settings.from_env()
defs = dg.Definitions(
    assets=[prepared, on_gpu, summarized],
    jobs=[dg.define_asset_job(JOB)],
    resources={
        "io_manager": JsonIOManager(base_dir=f"{_settings.state_url}/assets", s3_endpoint_url=_settings.s3_endpoint_url)
    },
    executor=executor_for(_settings),
)


def celery_smoke_job() -> dg.JobDefinition:
    """What workers rebuild (`dg.reconstructable` points at this function by module and name)."""
    return defs.resolve_job_def(JOB)


def launch() -> None:
    """Run the job on the instance of $DAGSTER_HOME; print the run id, its success and this process's pid."""
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(celery_smoke_job), instance)
        print(json.dumps({"run_id": result.run_id, "success": result.success, "pid": os.getpid()}))
