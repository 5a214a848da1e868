"""The Parquet IO manager: every partition read at once skips one never materialized; one read alone fails."""

import dagster as dg
import pandas as pd
import pytest

from avdag.resources.io_managers import ParquetIOManager, concat_partitions

batches = dg.StaticPartitionsDefinition(["ok", "never-run"])


@dg.asset(partitions_def=batches, io_manager_key="parquet_io")
def captions(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"batch": [context.partition_key], "fields_ok": [15]})


@dg.asset_check(asset=captions)
def every_caption_complete(captions) -> dg.AssetCheckResult:
    rows = concat_partitions(captions)
    return dg.AssetCheckResult(
        passed=bool((rows["fields_ok"] == 15).all()), metadata={"batches": sorted(rows["batch"])}
    )


@dg.asset(partitions_def=batches, io_manager_key="parquet_io")
def scores(captions: pd.DataFrame) -> pd.DataFrame:
    return captions


def test_a_check_over_all_partitions_skips_a_batch_that_never_ran(tmp_path):
    resources = {"parquet_io": ParquetIOManager(base_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        dg.materialize([captions], partition_key="ok", resources=resources, instance=instance)
        result = dg.materialize(
            [captions, every_caption_complete],
            selection=dg.AssetSelection.checks(every_caption_complete),
            resources=resources,
            instance=instance,
        )
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.passed and evaluation.metadata["batches"].value == ["ok"]

        with pytest.raises(FileNotFoundError, match="never-run"):  # one partition read alone must exist
            dg.materialize(
                [captions, scores],
                selection=[scores],
                partition_key="never-run",
                resources=resources,
                instance=instance,
            )
