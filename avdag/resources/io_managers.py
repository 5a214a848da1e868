"""IO managers that store asset values in open formats: Parquet for tables, JSON for records.

Dagster's default IO manager pickles; these write files a person or another tool can read, one
per asset partition, under `<AVDAG_STATE_URL>/assets` (a local folder or s3://), atomically: a
temp file renamed into place, or one upload.
"""

from __future__ import annotations

import io
import json
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from avdag.core.common.atomic import write_bytes_atomic
from avdag.core.common.state_store import storage_options
from avdag.settings import avdag_home

# Input metadata for an unpartitioned asset reading every partition of a partitioned one:
# always a {partition: value} dict (Dagster returns a bare value when only one partition exists),
# and partitions never materialized are skipped rather than failing the run (one the instance
# records as materialized but whose value is gone fails it: see load_from_path).
ALL_PARTITIONS = {"allow_missing_partitions": True, "partitions_as_dict": True}
# Input metadata for an unpartitioned input that may not exist yet (no checkpoint in service before
# the first promotion): the asset receives None instead of failing.
OPTIONAL_INPUT = {"optional": True}


def concat_partitions(value: Any) -> pd.DataFrame:
    """One table from what Dagster hands a reader of all partitions (a dict, or a bare frame).

    A partition never materialized (e.g. a score asset waiting for its judge batch) arrives as None.
    """
    if isinstance(value, dict):
        frames = [frame for _, frame in sorted(value.items()) if frame is not None]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return value


class MissingStoredValueError(LookupError):
    """The Dagster instance records a materialization whose stored value is gone; never a silent gap."""


class _AtomicUPathIOManager(dg.UPathIOManager):
    def load_input(self, context: dg.InputContext) -> Any:
        value = super().load_input(context)
        if context.definition_metadata.get("partitions_as_dict") and context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) == 1:
                return {keys[0]: value}
        return value

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        data = self._encode(obj)
        if path.protocol in ("", "file", "local"):
            write_bytes_atomic(path.path, data)  # temp file, then rename
        else:
            path.write_bytes(data)  # one upload: atomic on object storage

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        """The stored value; None for a value that was never materialized where the input may lack it.

        Dagster hands a reader of all partitions every partition key, materialized or not (and an
        asset check cannot ask for allow_missing_partitions), so one batch whose run failed before
        this asset must not break it: concat_partitions drops None. A value the instance records as
        materialized but that is missing from the store (another node's disk, a wiped folder, a
        different AVDAG_STATE_URL) is an error: reading on would compare or train on a subset.
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            partition = path.name.removesuffix(self.extension) if context.has_asset_partitions else None
            if _recorded_as_materialized(context, partition):
                what = context.asset_key.to_user_string() + (f" partition {partition}" if partition else "")
                raise MissingStoredValueError(
                    f"{path} is missing, but the Dagster instance records {what} as materialized: "
                    "the value was written to another store (AVDAG_STATE_URL) or removed; re-materialize it"
                ) from None
            many = context.has_asset_partitions and len(context.asset_partition_keys) > 1
            if context.definition_metadata.get("optional") or many:
                return None
            raise FileNotFoundError(f"{path} was never materialized") from None
        return self._decode(data)

    def _encode(self, obj: Any) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, data: bytes) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _recorded_as_materialized(context: dg.InputContext, partition: str | None) -> bool:
    instance = context.instance
    if partition is None:
        return instance.get_latest_materialization_event(context.asset_key) is not None
    return partition in instance.get_materialized_partitions(context.asset_key)


class _ParquetUPathIOManager(_AtomicUPathIOManager):
    extension = ".parquet"

    def _encode(self, obj: pd.DataFrame) -> bytes:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"parquet_io stores DataFrames, got {type(obj).__name__}")
        buffer = io.BytesIO()
        obj.to_parquet(buffer, index=False)
        return buffer.getvalue()

    def _decode(self, data: bytes) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(data))

    def get_metadata(self, context: dg.OutputContext, obj: pd.DataFrame) -> dict[str, Any]:
        """Column names and types, and the row count, so the UI shows every table's schema."""
        return {
            "dagster/column_schema": table_schema(obj),
            "dagster/row_count": dg.MetadataValue.int(len(obj)),
        }


def table_schema(frame: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(str(name), str(dtype)) for name, dtype in frame.dtypes.items()])


class _JsonUPathIOManager(_AtomicUPathIOManager):
    extension = ".json"

    def _encode(self, obj: Any) -> bytes:
        return (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")

    def _decode(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Tables as `<base_dir>/<asset>/<partition>.parquet`."""

    base_dir: str | None = Field(default=None, description="Local folder or s3:// URL; default $AVDAG_HOME/assets.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto, ...).")

    def create_io_manager(self, context) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(base_path=_base_path(self.base_dir, self.s3_endpoint_url))


class JsonIOManager(dg.ConfigurableIOManagerFactory):
    """Records as `<base_dir>/<asset>/<partition>.json`."""

    base_dir: str | None = Field(default=None, description="Local folder or s3:// URL; default $AVDAG_HOME/assets.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto, ...).")

    def create_io_manager(self, context) -> _JsonUPathIOManager:
        return _JsonUPathIOManager(base_path=_base_path(self.base_dir, self.s3_endpoint_url))


def _base_path(base_dir: str | None, s3_endpoint_url: str | None) -> UPath:
    url = base_dir or str(avdag_home() / "assets")
    return UPath(url, **storage_options(url, s3_endpoint_url))
