"""The instance config avdag ships loads in Dagster and limits the training and reporting stages to one run."""

import ast
import os
import shutil
import subprocess
import sys

from avdag.core.common.package_files import instance_config_file
from avdag.defs.pipeline.jobs import STAGE_TAG, clip_batch_pipeline, reporting_pipeline, training_pipeline

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
