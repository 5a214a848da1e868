"""What the sensors read from the Dagster instance: the newest materialization of an asset, per partition.

The instance is the shared record of what ran (every launcher writes to it), so sensors decide
from it rather than from files another run may be rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class Materialization:
    storage_id: int
    partition: str | None
    metadata: dict[str, Any]


def _plain(metadata: dict) -> dict[str, Any]:
    return {name: getattr(value, "value", value) for name, value in metadata.items()}


def latest(instance: dg.DagsterInstance, asset: str) -> Materialization | None:
    """The newest materialization of `asset` (any partition)."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if not records:
        return None
    record = records[0]
    return Materialization(record.storage_id, record.partition_key, _plain(record.asset_materialization.metadata))


def latest_of_partition(instance: dg.DagsterInstance, asset: str, partition: str) -> Materialization | None:
    """The newest materialization of one partition of `asset`."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return Materialization(record.storage_id, record.partition_key, _plain(record.asset_materialization.metadata))


def latest_by_partition(instance: dg.DagsterInstance, asset: str) -> dict[str, Materialization]:
    """The newest materialization of each partition of `asset`."""
    storage_ids = instance.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    if not storage_ids:
        return {}
    found: dict[str, Materialization] = {}
    ids = sorted(storage_ids.values())
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=chunk), limit=len(chunk)
        )
        for record in result.records:
            found[record.partition_key] = Materialization(
                record.storage_id, record.partition_key, _plain(record.asset_materialization.metadata)
            )
    return found


def active_partitions(instance: dg.DagsterInstance, job_name: str) -> set[str]:
    """Partitions that have a queued or running run of `job_name`."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=ACTIVE_STATUSES), limit=1000)
    return {r.dagster_run.tags.get("dagster/partition") for r in records} - {None}


def has_active_run(instance: dg.DagsterInstance, job_name: str) -> bool:
    return bool(instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=ACTIVE_STATUSES), limit=1))
