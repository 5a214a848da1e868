"""The IO managers: a reader of every partition skips one never materialized and fails on one whose stored
value is gone; one partition read alone must exist; an s3:// base writes to the bucket."""

import dagster as dg
import pandas as pd
import pytest

from avdag.resources.io_managers import (
    ALL_PARTITIONS,
    OPTIONAL_INPUT,
    JsonIOManager,
    MissingStoredValueError,
    ParquetIOManager,
    concat_partitions,
)

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


@dg.asset(ins={"captions": dg.AssetIn(metadata=ALL_PARTITIONS)}, io_manager_key="parquet_io")
def report(captions: dict) -> pd.DataFrame:
    return concat_partitions(captions)


def test_a_materialized_partition_whose_file_is_gone_is_an_error_naming_it(tmp_path):
    """Dagster hands the reader every partition key; the instance tells a lost value from one never made."""
    resources = {"parquet_io": ParquetIOManager(base_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        for batch in ("ok", "never-run"):
            dg.materialize([captions], partition_key=batch, resources=resources, instance=instance)
        lost = tmp_path / "captions" / "never-run.parquet"
        lost.unlink()
        for selection in ([report], dg.AssetSelection.checks(every_caption_complete)):
            with pytest.raises(MissingStoredValueError, match=f"{lost}.*records captions partition never-run"):
                dg.materialize(
                    [captions, report, every_caption_complete],
                    selection=selection,
                    resources=resources,
                    instance=instance,
                )


@dg.asset(io_manager_key="json_io")
def record() -> dict:
    return {"ok": True}


@dg.asset(ins={"record": dg.AssetIn(metadata=OPTIONAL_INPUT)}, io_manager_key="json_io")
def reader(record: dict | None) -> dict:
    return {"saw": record}


def test_an_optional_input_is_none_until_materialized_and_an_error_once_lost(tmp_path):
    resources = {"json_io": JsonIOManager(base_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        run = dg.materialize([record, reader], selection=[reader], resources=resources, instance=instance)
        assert run.output_for_node("reader") == {"saw": None}
        dg.materialize([record], resources=resources, instance=instance)
        (tmp_path / "record.json").unlink()
        with pytest.raises(MissingStoredValueError, match="record.json"):
            dg.materialize([record, reader], selection=[reader], resources=resources, instance=instance)


def test_values_go_to_object_storage_as_one_upload_each(tmp_path, s3, monkeypatch):
    """An s3:// base writes to the bucket (it used to become a local folder named 's3:')."""
    monkeypatch.chdir(tmp_path)
    s3.make_bucket("state-bucket")
    base = "s3://state-bucket/avdag/assets"
    resources = {
        "parquet_io": ParquetIOManager(base_dir=base, s3_endpoint_url=s3.endpoint_url),
        "json_io": JsonIOManager(base_dir=base, s3_endpoint_url=s3.endpoint_url),
    }
    with dg.instance_for_test() as instance:
        dg.materialize([captions], partition_key="ok", resources=resources, instance=instance)
        result = dg.materialize(
            [captions, report, record, reader],
            selection=[report, record, reader],
            resources=resources,
            instance=instance,
        )
    assert list(result.output_for_node("report")["batch"]) == ["ok"]
    assert result.output_for_node("reader") == {"saw": {"ok": True}}
    assert sorted(s3.fs().find("state-bucket/avdag/assets")) == [
        "state-bucket/avdag/assets/captions/ok.parquet",
        "state-bucket/avdag/assets/reader.json",
        "state-bucket/avdag/assets/record.json",
        "state-bucket/avdag/assets/report.parquet",
    ]
    assert list(tmp_path.iterdir()) == []
