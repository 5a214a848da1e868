"""clip_catalog: every clip, its metadata, human label and latest captions, searchable with DuckDB."""

import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from avdag.core.reporting.catalog import CATALOG, build_catalog, catalog_markdown
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.storage import StateStoreResource


@dg.asset(
    ins={
        "raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS),
        "baseline_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
    },
    group_name="catalog",
    kinds={"duckdb", "parquet"},
)
def clip_catalog(
    raw_clips: dict,
    split_manifest: pd.DataFrame,
    baseline_captions: dict,
    finetuned_captions: dict,
    state: StateStoreResource,
) -> dg.MaterializeResult:
    """Rebuilt from every batch and stored in the state store in one write; `avdag search` queries it."""
    captions = pd.concat(
        [concat_partitions(baseline_captions), concat_partitions(finetuned_captions)], ignore_index=True
    )
    store, scratch = state.store(), state.scratch()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as work:
        built = Path(work) / "clips.parquet"
        counts = build_catalog(built, concat_partitions(raw_clips), split_manifest, captions)
        store.write_bytes(CATALOG, built.read_bytes())
        preview = catalog_markdown(built)
    return dg.MaterializeResult(
        metadata={
            **{k: int(v) for k, v in counts.items()},
            "path": dg.MetadataValue.path(store.uri(CATALOG)),
            "preview": dg.MetadataValue.md(preview),
        }
    )
