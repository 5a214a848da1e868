"""Jobs the sensor and schedule launch: the whole chain for one clip batch."""

import dagster as dg

# Everything from upload to chart. sft_checkpoint and score_comparison are unpartitioned and
# run in the same job, over all batches, after the batch's own assets.
batch_pipeline_job = dg.define_asset_job(
    "batch_pipeline",
    selection=dg.AssetSelection.all(),
    description="Ingest, caption, fine-tune, re-caption, judge and compare for one clip batch.",
)
