"""baseline_judge_scores and finetuned_judge_scores: one factory, the same judge and questions."""

import dagster as dg
import pandas as pd

from avdag.core.captioning.model import CaptionSource
from avdag.core.judging.batch_api import BatchApiPending
from avdag.core.judging.calibration import labels_of
from avdag.core.judging.items import summarize_scores
from avdag.core.judging.score_captions import score_captions
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.captioner import CaptionerResource
from avdag.resources.judge import JudgeResource


def build_judge_scores_asset(source: CaptionSource) -> dg.AssetsDefinition:
    captions_key = f"{source}_captions"

    @dg.asset(
        name=f"{source}_judge_scores",
        ins={"captions": dg.AssetIn(captions_key)},
        partitions_def=clip_batches,
        io_manager_key="parquet_io",
        group_name="evaluation",
        kinds={"openai", "parquet"},
        description=f"Judge scores (1-5) of the {source} captions of the eval clips, per question, with lineage.",
        output_required=False,  # a Batch API judge ends the run unmaterialized until its batch is back
    )
    def _judge_scores(
        context: dg.AssetExecutionContext,
        raw_clips: pd.DataFrame,
        clip_splits: pd.DataFrame,
        captions: pd.DataFrame,
        captioner: CaptionerResource,
        judge: JudgeResource,
    ):
        prompts = captioner.prompts()
        eval_ids = set(clip_splits.loc[clip_splits["split"] == "eval", "clip_id"])
        eval_clips = raw_clips[raw_clips["clip_id"].isin(eval_ids)]
        scorer = judge.build_scorer(
            prompts, {"asset": context.asset_key.to_user_string(), "partition": context.partition_key}
        )
        # the batch's human labels: the offline judge ranks each answer among them
        scorer = judge.with_reference_labels(scorer, labels_of(raw_clips).values())
        try:
            frame, spend = score_captions(
                scorer, prompts, eval_clips, captions, cache=judge.cache(), log=context.log.info
            )
        except BatchApiPending as pending:
            context.log.info(str(pending))
            context.log_event(_pending_observation(context, pending))
            return
        frame["score_run_id"] = context.run.run_id  # with caption_run_id, the runs behind every score
        summary = summarize_scores(frame)
        yield dg.Output(
            frame,
            metadata={
                **{f"judge_{name}": count for name, count in spend.as_dict().items()},
                "eval_clips": len(eval_clips),
                "scores": int(frame["score"].notna().sum()),
                "judge_id": dg.MetadataValue.text(scorer.judge_id),
                # which model wrote the judged captions: sensors match it against the checkpoint in service
                "model_hash": dg.MetadataValue.text(",".join(sorted(set(captions["model_hash"].astype(str))))),
                "mean_score": float(pd.to_numeric(frame["score"]).mean())
                if frame["score"].notna().any()
                else float("nan"),
                "summary": dg.MetadataValue.md(
                    summary.round(3).to_markdown(index=False) if len(summary) else "no eval clips"
                ),
            },
        )

    return _judge_scores


def _pending_observation(context: dg.AssetExecutionContext, pending: BatchApiPending) -> dg.AssetObservation:
    """What the UI shows for a score asset whose verdicts are still in a batch."""
    submission = pending.submission
    return dg.AssetObservation(
        asset_key=context.asset_key,
        partition=context.partition_key,
        metadata={
            "judge_batch_status": dg.MetadataValue.text(submission.progress()),
            "judge_batch_requests": len(submission.custom_ids),
            "judge_batch_request_key": dg.MetadataValue.text(submission.request_key),
            "judge_batch_submitted_now": pending.submitted_now,
        },
    )


baseline_judge_scores = build_judge_scores_asset("baseline")
finetuned_judge_scores = build_judge_scores_asset("finetuned")
