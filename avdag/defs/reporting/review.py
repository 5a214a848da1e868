"""batch_review and eval_review: each clip beside every answer, as a page a reviewer filters.

Thin wiring: the rows, the filter and the page are `avdag.core.reporting.review`; videos come
through the state store (fetched and checked by sha256 as captioning fetches them), and the page
and its JSON/CSV exports go back to it, so `avdag review` and the UI's links read them anywhere.
"""

import dagster as dg
import pandas as pd

from avdag.core.reporting.review import (
    EVAL_REVIEW,
    clip_frames,
    publish_review,
    review_rows,
    worst_markdown,
)
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, OPTIONAL_INPUT, concat_partitions
from avdag.resources.storage import StateStoreResource


def _frames(value) -> pd.DataFrame:
    return value if isinstance(value, pd.DataFrame) else pd.DataFrame()


def _link(store, key: str) -> dg.MetadataValue:
    uri = store.uri(key)
    return dg.MetadataValue.path(uri) if store.is_local else dg.MetadataValue.url(uri)


def _publish(context, state: StateStoreResource, name: str, rows: list[dict], title: str, subtitle: str):
    store = state.store()
    keys = publish_review(store, name, rows, title, subtitle)
    judged = [r for r in rows if r["min_score"] is not None]
    context.log.info(f"review of {len(rows)} clips at {store.uri(keys['html'])}")
    return dg.MaterializeResult(
        metadata={
            "clips": len(rows),
            "judged_clips": len(judged),
            "clips_finetuned_worse": sum(r["fields_worse"] > 0 for r in rows),
            "clips_disagreeing": sum(r["fields_disagree"] > 0 for r in rows),
            "clips_parse_failed": sum(r["parse_failed"] for r in rows),
            "clips_without_frames": sum(not r["frames"] for r in rows),
            "worst_clips": dg.MetadataValue.md(worst_markdown(rows)),
            "page": _link(store, keys["html"]),
            "json": _link(store, keys["json"]),
            "csv": _link(store, keys["csv"]),
            "open_locally": dg.MetadataValue.text(f"avdag review {name} --open"),
        }
    )


@dg.asset(
    partitions_def=clip_batches,
    ins={
        "finetuned_captions": dg.AssetIn(metadata=OPTIONAL_INPUT),
        "baseline_judge_scores": dg.AssetIn(metadata=OPTIONAL_INPUT),
        "finetuned_judge_scores": dg.AssetIn(metadata=OPTIONAL_INPUT),
    },
    group_name="review",
    kinds={"html", "json", "csv"},
)
def batch_review(
    context: dg.AssetExecutionContext,
    raw_clips: pd.DataFrame,
    clip_splits: pd.DataFrame,
    baseline_captions: pd.DataFrame,
    finetuned_captions: pd.DataFrame | None,
    baseline_judge_scores: pd.DataFrame | None,
    finetuned_judge_scores: pd.DataFrame | None,
    captioner: CaptionerResource,
    state: StateStoreResource,
) -> dg.MaterializeResult:
    """Every clip of the batch with its frames, label, both answers and (eval clips) the judge's scores."""
    captions = pd.concat([baseline_captions, _frames(finetuned_captions)], ignore_index=True)
    scores = pd.concat([_frames(baseline_judge_scores), _frames(finetuned_judge_scores)], ignore_index=True)
    frames = clip_frames(raw_clips, state.video, log=context.log.warning)
    rows = review_rows(raw_clips, clip_splits, captions, scores, questions=captioner.prompts().questions, frames=frames)
    batch = context.partition_key
    model = _model_hashes(finetuned_captions)
    subtitle = f"{len(rows)} clips; fine-tuned answers of {model}" if model else f"{len(rows)} clips; no fine-tuned"
    return _publish(context, state, batch, rows, f"avdag review: batch {batch}", subtitle)


def _model_hashes(captions) -> str:
    if not isinstance(captions, pd.DataFrame) or not len(captions):
        return ""
    return ", ".join(sorted(set(captions["model_hash"].astype(str))))


@dg.asset(
    ins={
        "raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS),
        "clip_splits": dg.AssetIn(metadata=ALL_PARTITIONS),
        "baseline_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "baseline_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "checkpoint_in_service": dg.AssetIn(metadata=OPTIONAL_INPUT),
    },
    group_name="review",
    kinds={"html", "json", "csv"},
)
def eval_review(
    context: dg.AssetExecutionContext,
    raw_clips: dict,
    clip_splits: dict,
    baseline_captions: dict,
    finetuned_captions: dict,
    baseline_judge_scores: dict,
    finetuned_judge_scores: dict,
    checkpoint_in_service: dict | None,
    captioner: CaptionerResource,
    state: StateStoreResource,
) -> dg.MaterializeResult:
    """The eval split of every batch, baseline vs the checkpoint in service: the clips behind the comparison.

    Fine-tuned captions and scores of another checkpoint are left out, as in score_comparison.
    """
    in_service = (checkpoint_in_service or {}).get("weights_hash")
    splits = [frame.assign(batch=batch) for batch, frame in sorted(clip_splits.items()) if frame is not None]
    splits = pd.concat(splits, ignore_index=True) if splits else pd.DataFrame(columns=["clip_id", "split", "batch"])
    eval_splits = splits[splits["split"] == "eval"]
    eval_keys = set(zip(eval_splits["batch"], eval_splits["clip_id"]))
    clips = concat_partitions(raw_clips)
    clips = clips[[key in eval_keys for key in zip(clips["batch"], clips["clip_id"])]] if len(clips) else clips
    tuned = _in_service(concat_partitions(finetuned_captions), in_service)
    tuned_scores = _in_service(concat_partitions(finetuned_judge_scores), in_service)
    captions = pd.concat([concat_partitions(baseline_captions), tuned], ignore_index=True)
    scores = pd.concat([concat_partitions(baseline_judge_scores), tuned_scores], ignore_index=True)
    frames = clip_frames(clips, state.video, log=context.log.warning)
    rows = review_rows(clips, splits, captions, scores, questions=captioner.prompts().questions, frames=frames)
    checkpoint = (checkpoint_in_service or {}).get("checkpoint_id") or "none in service"
    subtitle = f"{len(rows)} eval clips of every batch; fine-tuned = checkpoint in service {checkpoint}"
    return _publish(context, state, EVAL_REVIEW, rows, "avdag review: eval split", subtitle)


def _in_service(frame: pd.DataFrame, weights_hash: str | None) -> pd.DataFrame:
    return frame[frame["model_hash"] == weights_hash] if len(frame) else frame
