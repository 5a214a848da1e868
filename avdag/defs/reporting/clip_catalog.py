"""clip_catalog: every clip, its metadata, human label and latest captions, searchable in DuckDB."""

import dagster as dg
import pandas as pd

from avdag.core.reporting.catalog import build_catalog, catalog_markdown
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.storage import ArtifactStoreResource

CATALOG_FILE = "catalog.duckdb"


@dg.asset(
    ins={
        "raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS),
        "baseline_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
    },
    group_name="catalog",
    kinds={"duckdb"},
)
def clip_catalog(
    raw_clips: dict,
    split_manifest: pd.DataFrame,
    baseline_captions: dict,
    finetuned_captions: dict,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """Rebuilt (atomically) from every batch; `avdag search` queries it."""
    path = artifacts.path(CATALOG_FILE)
    captions = pd.concat(
        [concat_partitions(baseline_captions), concat_partitions(finetuned_captions)], ignore_index=True
    )
    counts = build_catalog(path, concat_partitions(raw_clips), split_manifest, captions)
    return dg.MaterializeResult(
        metadata={
            **{k: int(v) for k, v in counts.items()},
            "path": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.md(catalog_markdown(path)),
        }
    )
