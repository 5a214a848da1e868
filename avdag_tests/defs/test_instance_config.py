"""The instance configs avdag ships load in Dagster and limit the training and reporting stages to one run.

`avdag/dagster.yaml` is the one-machine default; `avdag/dagster-production.yaml` (Postgres storage, compute
logs on S3) is checked against a real Postgres and a loopback S3.
"""

import ast
import os
import shutil
import subprocess
import sys

import dagster as dg
import yaml

from avdag.core.common.package_files import instance_config_file
from avdag.defs.pipeline.jobs import STAGE_TAG, clip_batch_pipeline, reporting_pipeline, training_pipeline
from avdag_tests.support.production_instance import PRODUCTION_CONFIG, compute_logs, production_instance_env

PROBE = """
import dagster as dg
config = dg.DagsterInstance.get().get_concurrency_config().run_queue_config
print({(limit["key"], limit["value"]): limit["limit"] for limit in config.tag_concurrency_limits})
"""


def test_the_shipped_instance_config_limits_each_stage(tmp_path):
    shutil.copy(instance_config_file(), tmp_path / "dagster.yaml")
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    limits = ast.literal_eval(out)
    assert limits == {(STAGE_TAG, "training"): 1, (STAGE_TAG, "reporting"): 1}
    assert training_pipeline.tags[STAGE_TAG] == "training" and reporting_pipeline.tags[STAGE_TAG] == "reporting"
    assert clip_batch_pipeline.tags[STAGE_TAG] == "clip-batch"  # not limited: many batch runs at once


def test_the_cli_installs_it_into_a_new_home(tmp_path, monkeypatch):
    from avdag.cli import _prepare_environment

    monkeypatch.setenv("AVDAG_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", "/elsewhere")
    _prepare_environment()
    installed = tmp_path / "dagster" / "dagster.yaml"
    assert installed.read_text() == instance_config_file().read_text()
    assert os.environ["DAGSTER_HOME"] == str(tmp_path / "dagster")


def test_both_shipped_configs_pass_dagsters_instance_config_schema(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    for source in (instance_config_file(), PRODUCTION_CONFIG):
        home = tmp_path / source.stem
        home.mkdir()
        shutil.copy(source, home / "dagster.yaml")
        config, custom_instance_class = dagster_instance_config(str(home))
        assert custom_instance_class is None and config["telemetry"] == {"enabled": False}
    assert set(config["storage"]) == {"postgres"}
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"


def test_the_production_config_keeps_the_same_run_queue_limits_and_pools():
    default = yaml.safe_load(instance_config_file().read_text(encoding="utf-8"))
    production = yaml.safe_load(PRODUCTION_CONFIG.read_text(encoding="utf-8"))
    assert production["concurrency"] == default["concurrency"]


def test_the_production_config_runs_on_postgres_with_compute_logs_on_s3(tmp_path, monkeypatch, postgres_url, s3):
    """Constructed by Dagster on a real Postgres (a database of its own) and a loopback S3, then used for a run."""
    for name, value in production_instance_env(postgres_url, s3, tmp_path).items():
        monkeypatch.setenv(name, value)

    @dg.asset
    def noisy() -> int:
        print("printed by a step, kept on S3", flush=True)
        return 1

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {(limit["key"], limit["value"]): limit["limit"] for limit in limits} == {
            (STAGE_TAG, "training"): 1,
            (STAGE_TAG, "reporting"): 1,
        }
        result = dg.materialize([noisy], instance=instance)
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    logs = compute_logs(s3)
    assert any(b"printed by a step, kept on S3" in content for content in logs.values()), logs
