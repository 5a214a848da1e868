"""labeling_queue: the unlabelled clips of every batch, ranked for annotators, with the reason for each rank."""

import io

import dagster as dg
import pandas as pd

from avdag.core.reporting.labeling_queue import labeling_queue as rank_clips
from avdag.core.reporting.labeling_queue import queue_markdown
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.storage import StateStoreResource

QUEUE_CSV = "labeling/queue.csv"  # state-store key of the queue


@dg.asset(
    ins={
        "raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS),
        "baseline_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
    },
    group_name="review",
    kinds={"csv"},
)
def labeling_queue(
    context: dg.AssetExecutionContext,
    raw_clips: dict,
    baseline_captions: dict,
    finetuned_captions: dict,
    state: StateStoreResource,
) -> dg.MaterializeResult:
    """Model uncertainty, distance from what is labelled and rare scenes put a clip near the top; the CSV
    in the state store is what annotators work through."""
    captions = pd.concat(
        [concat_partitions(baseline_captions), concat_partitions(finetuned_captions)], ignore_index=True
    )
    queue = rank_clips(concat_partitions(raw_clips), captions)
    buffer = io.StringIO()
    queue.to_csv(buffer, index=False)
    store = state.store()
    store.write_bytes(QUEUE_CSV, buffer.getvalue().encode("utf-8"))
    context.log.info(f"{len(queue)} unlabelled clips queued at {store.uri(QUEUE_CSV)}")
    uri = store.uri(QUEUE_CSV)
    return dg.MaterializeResult(
        metadata={
            "unlabelled_clips": len(queue),
            "top": dg.MetadataValue.md(queue_markdown(queue)),
            "csv": dg.MetadataValue.path(uri) if store.is_local else dg.MetadataValue.url(uri),
        }
    )
