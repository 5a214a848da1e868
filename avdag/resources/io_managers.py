"""IO managers that store asset values in open formats: Parquet for tables, JSON for records.

Dagster's default IO manager pickles; these write files a person or another tool can read,
one per asset partition, atomically (temp file, then rename).
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import pandas as pd
from upath import UPath

from avdag.core.common.atomic import atomic_path
from avdag.settings import avdag_home

# Input metadata for an unpartitioned asset reading every partition of a partitioned one:
# always a {partition: value} dict (Dagster returns a bare value when only one partition exists),
# and partitions not yet materialized are skipped rather than failing the run.
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


class _AtomicUPathIOManager(dg.UPathIOManager):
    def load_input(self, context: dg.InputContext) -> Any:
        value = super().load_input(context)
        if context.definition_metadata.get("partitions_as_dict") and context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) == 1:
                return {keys[0]: value}
        return value

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        with atomic_path(str(path)) as tmp:
            self._write(obj, tmp)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        """The stored value; None for a partition never materialized when many are read at once.

        A reader of all partitions (an asset check cannot ask for allow_missing_partitions) must
        not break because one batch's run failed before this asset; concat_partitions drops None.
        """
        if context.definition_metadata.get("optional") and not path.exists():
            return None
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1 and not path.exists():
            context.log.warning(f"{path} was never materialized; that partition is left out")
            return None
        return self._read(path)

    def _write(self, obj: Any, tmp) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, path: UPath) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class _ParquetUPathIOManager(_AtomicUPathIOManager):
    extension = ".parquet"

    def _write(self, obj: pd.DataFrame, tmp) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"parquet_io stores DataFrames, got {type(obj).__name__}")
        obj.to_parquet(tmp, index=False)

    def _read(self, path: UPath) -> pd.DataFrame:
        return pd.read_parquet(str(path))

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

    def _write(self, obj: Any, tmp) -> None:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")

    def _read(self, path: UPath) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Tables as `<base_dir>/<asset>/<partition>.parquet`."""

    base_dir: str | None = None

    def create_io_manager(self, context) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(base_path=UPath(self.base_dir or avdag_home() / "assets"))


class JsonIOManager(dg.ConfigurableIOManagerFactory):
    """Records as `<base_dir>/<asset>/<partition>.json`."""

    base_dir: str | None = None

    def create_io_manager(self, context) -> _JsonUPathIOManager:
        return _JsonUPathIOManager(base_path=UPath(self.base_dir or avdag_home() / "assets"))
