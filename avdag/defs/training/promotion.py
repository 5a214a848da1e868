"""Champion/challenger: a new checkpoint is judged on the eval split before anything re-captions with it.

`candidate_evaluation` captions only the eval clips (every batch) with the candidate and with the
checkpoint in service (the base model before the first promotion), judges both with the live judge
and applies the promotion rule. The blocking check `candidate_not_worse` gates
`checkpoint_in_service`; when that record changes, the promotion sensor re-captions every batch.
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from avdag.core.captioning.caption_cache import caption_clips
from avdag.core.common.model_identity import model_fingerprint
from avdag.core.judging.calibration import labels_of
from avdag.core.judging.score_captions import score_captions
from avdag.core.reporting.charts import compare_scores, table_as_markdown
from avdag.core.reporting.promotion import PromotionRule, decide_promotion
from avdag.defs.pipeline.instance_reads import latest
from avdag.defs.pipeline.pools import GPU_POOL, GPU_STEP_TAGS
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.judge import JudgeResource
from avdag.resources.storage import StateStoreResource


class PromotionConfig(dg.Config):
    """The promotion rule (see `avdag.core.reporting.promotion.PromotionRule`), recorded with each decision."""

    mode: str = "mean_not_worse"
    max_regression: float = 0.0
    min_eval_clips: int = 1

    def rule(self) -> PromotionRule:
        if self.mode not in ("mean_not_worse", "not_significantly_worse"):
            raise ValueError(f"promotion mode {self.mode!r}: expected mean_not_worse or not_significantly_worse")
        return PromotionRule(mode=self.mode, max_regression=self.max_regression, min_eval_clips=self.min_eval_clips)


def eval_clips_of(raw_clips: pd.DataFrame, split_manifest: pd.DataFrame) -> pd.DataFrame:
    """The eval-split clips of every batch, as the manifest that trained the candidate says."""
    sides = split_manifest[["batch", "clip_id", "split"]]
    clips = raw_clips.merge(sides, on=["batch", "clip_id"])
    return clips[clips["split"] == "eval"].drop(columns="split").sort_values(["batch", "clip_id"])


@dg.asset(
    ins={"raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS)},
    io_manager_key="json_io",
    group_name="training",
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "json"},
)
def candidate_evaluation(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    raw_clips: dict,
    split_manifest: pd.DataFrame,
    sft_checkpoint: dict,
    captioner: CaptionerResource,
    state: StateStoreResource,
    judge: JudgeResource,
) -> dg.Output[dict]:
    """The candidate against the checkpoint in service, on the eval split only (not every clip)."""
    prompts = captioner.prompts()
    scorer = judge.build(prompts)  # the live judge: a promotion cannot wait a day for a Batch API answer
    scorer = judge.with_reference_labels(scorer, labels_of(concat_partitions(raw_clips)).values())
    cache = judge.cache()
    clips = eval_clips_of(concat_partitions(raw_clips), split_manifest)
    # The champion is read from the instance's record of the last promotion (an input would make
    # a cycle: the promotion depends on this evaluation); its storage id is kept for lineage.
    service = latest(context.instance, "checkpoint_in_service")
    if service is not None:
        champion = {
            "checkpoint_id": service.metadata["checkpoint_id"],
            "path": _champion_path(service.metadata),
            "weights_hash": service.metadata["weights_hash"],
        }
        champion["service_storage_id"] = service.storage_id
    else:
        base = captioner.base_model(state)
        champion = {
            "checkpoint_id": "base-model",
            "path": base,
            "weights_hash": model_fingerprint(state.local_model(base)),
        }
    candidate = {k: sft_checkpoint[k] for k in ("checkpoint_id", "path", "weights_hash")}
    sides = {}
    for name, model in (("champion", champion), ("challenger", candidate)):
        engine = captioner.captioner(model["path"], state)
        captions = caption_clips(
            engine,
            clips,
            prompts,
            state.store(),
            "finetuned",
            video=state.video,
            log=context.log.info,
            run_id=context.run.run_id,
        )
        frames = [
            score_captions(
                scorer, prompts, group, captions[captions["batch"] == batch], cache=cache, log=context.log.info
            )[0]
            for batch, group in clips.groupby("batch")
        ]
        sides[name] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["batch", "clip_id"])
    rule = config.rule()
    decision = decide_promotion(sides["champion"], sides["challenger"], rule)
    table = compare_scores(sides["champion"], sides["challenger"], list(prompts.questions)) if len(clips) else None
    record = {
        "candidate": candidate,
        "champion": champion,
        "split_manifest_hash": sft_checkpoint.get("split_manifest_hash"),
        "eval_clips": [f"{b}/{c}" for b, c in clips[["batch", "clip_id"]].itertuples(index=False)],
        "judge_id": scorer.judge_id,
        "decision": decision.as_dict(),
        "table": json.loads(table.to_json(orient="records")) if table is not None else [],
    }
    context.log.info(f"{candidate['checkpoint_id']} vs {champion['checkpoint_id']}: {decision.reason}")
    return dg.Output(
        record,
        metadata={
            "candidate": dg.MetadataValue.text(candidate["checkpoint_id"]),
            "champion": dg.MetadataValue.text(champion["checkpoint_id"]),
            "promote": decision.promote,
            "reason": dg.MetadataValue.text(decision.reason),
            "rule": dg.MetadataValue.text(rule.describe()),
            "eval_clips": decision.eval_clips,
            "mean_difference": decision.mean_difference,
            "judge_failures_excluded": decision.judge_failures_excluded,
            "small_sample": decision.small_sample,
            "per_question": dg.MetadataValue.md(
                table_as_markdown(table, ("champion", "challenger")) if table is not None else "no eval clips"
            ),
        },
    )


def _champion_path(metadata: dict) -> str:
    """The champion's folder: its own metadata key; a record made before that key existed is read instead
    ("path" is the IO manager's key and names the record file)."""
    if "checkpoint_path" in metadata:
        return metadata["checkpoint_path"]
    return json.loads(Path(metadata["path"]).read_text(encoding="utf-8"))["path"]


@dg.asset_check(
    asset=candidate_evaluation,
    blocking=True,
    description="The candidate is not worse than the checkpoint in service on the eval split (the recorded "
    "rule); promotion waits for this.",
)
def candidate_not_worse(candidate_evaluation: dict) -> dg.AssetCheckResult:
    decision = candidate_evaluation["decision"]
    return dg.AssetCheckResult(
        passed=bool(decision["promote"]),
        metadata={
            "reason": dg.MetadataValue.text(decision["reason"]),
            "rule": dg.MetadataValue.text(decision["rule"]["description"]),
            "mean_difference": decision["mean_difference"],
            "eval_clips": decision["eval_clips"],
        },
    )


GATE_STEP = "candidate_evaluation_candidate_not_worse"


def refusal_in_run(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the gate refused the candidate in run `run_id`; None when the run did not fail on the gate alone.

    A refusal is an outcome, not an error: the checkpoint in service stays, and so do its captions.
    """
    failed = {
        stat.step_key for stat in instance.get_run_step_stats(run_id) if stat.status and stat.status.value == "FAILURE"
    }
    if failed != {GATE_STEP}:
        return None
    records = instance.fetch_materializations(dg.AssetKey("candidate_evaluation"), limit=1).records
    if not records or records[0].run_id != run_id:
        return None
    metadata = records[0].asset_materialization.metadata
    return f"{metadata['candidate'].value} refused ({metadata['reason'].value})"


@dg.asset(io_manager_key="json_io", group_name="training", kinds={"json"})
def checkpoint_in_service(context: dg.AssetExecutionContext, candidate_evaluation: dict, sft_checkpoint: dict) -> dict:
    """The checkpoint fine-tuned captions come from: the candidate, once it passed `candidate_not_worse`."""
    if candidate_evaluation["candidate"]["checkpoint_id"] != sft_checkpoint["checkpoint_id"]:
        raise ValueError(
            f"evaluation is of {candidate_evaluation['candidate']['checkpoint_id']}, "
            f"the checkpoint is {sft_checkpoint['checkpoint_id']}: re-run candidate_evaluation"
        )
    record = {
        **{k: sft_checkpoint[k] for k in ("checkpoint_id", "path", "weights_hash", "split_manifest_hash")},
        "replaces": candidate_evaluation["champion"]["checkpoint_id"],
        "decision": candidate_evaluation["decision"],
        "promoted_by_run": context.run.run_id,
    }
    context.add_output_metadata(
        {
            "checkpoint_id": dg.MetadataValue.text(record["checkpoint_id"]),
            "weights_hash": dg.MetadataValue.text(record["weights_hash"]),
            "checkpoint_path": dg.MetadataValue.path(record["path"]),
            "replaces": dg.MetadataValue.text(record["replaces"]),
            "reason": dg.MetadataValue.text(record["decision"]["reason"]),
        }
    )
    return record
