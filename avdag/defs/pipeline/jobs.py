"""The three jobs, split by what changes when.

- `clip_batch_pipeline`, one run per clip batch (partition), many at once: ingest, splits,
  baseline captions and scores, fine-tuned captions and scores with the checkpoint in service, and
  the batch's review page.
  It never trains and never writes a collection-wide asset.
- `training_pipeline`, unpartitioned, one run at a time: split manifest (blocking leak check), SFT
  checkpoint, champion/challenger evaluation on the eval split, promotion (blocking gate).
- `reporting_pipeline`, one run at a time: the judge's calibration (a blocking check), the comparison
  chart, the clip catalog, the eval split's review page and the labeling queue.

"One run at a time" is the instance's run queue: runs carry the tag `avdag/stage`, and the
instance config avdag ships (`avdag/dagster.yaml`) limits the training and reporting stages to one
run each. The executor is the Definitions' (`AVDAG_EXECUTOR`, see `executors.py`): by default every
job runs its steps in one process, so torch and the model are loaded once per run, not once per step.
"""

import dagster as dg

STAGE_TAG = "avdag/stage"

PER_BATCH_ASSETS = (
    "raw_clips",
    "clip_quarantine",
    "clip_splits",
    "baseline_captions",
    "baseline_judge_scores",
    "finetuned_captions",
    "finetuned_judge_scores",
    "batch_review",
)
# What a promotion re-runs per batch; the review follows the new answers and scores.
FINETUNED_ASSETS = ("finetuned_captions", "finetuned_judge_scores", "batch_review")
TRAINING_ASSETS = ("split_manifest", "sft_checkpoint", "candidate_evaluation", "checkpoint_in_service")
# judge_calibration first: its blocking check stops the comparison when the judge cannot tell right from wrong.
REPORTING_ASSETS = ("judge_calibration", "score_comparison", "clip_catalog", "eval_review", "labeling_queue")

clip_batch_pipeline = dg.define_asset_job(
    "clip_batch_pipeline",
    selection=dg.AssetSelection.assets(*PER_BATCH_ASSETS),
    tags={STAGE_TAG: "clip-batch"},
    description="Ingest, split, caption and judge one clip batch (fine-tuned with the checkpoint in service).",
)
training_pipeline = dg.define_asset_job(
    "training_pipeline",
    selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
    tags={STAGE_TAG: "training"},
    description="Train a candidate on every batch's train split, judge it against the checkpoint in service "
    "on the eval split, promote it if it is not worse.",
)
reporting_pipeline = dg.define_asset_job(
    "reporting_pipeline",
    selection=dg.AssetSelection.assets(*REPORTING_ASSETS),
    tags={STAGE_TAG: "reporting"},
    description="The judge's calibration, then baseline vs the checkpoint in service over every batch's eval "
    "clips; the clip catalog.",
)
JOBS = [clip_batch_pipeline, training_pipeline, reporting_pipeline]
