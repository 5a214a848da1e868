"""baseline_captions and finetuned_captions: one factory, so the two can never drift apart."""

from typing import Any

import dagster as dg
import pandas as pd

from avdag.core.captioning.caption_cache import caption_clips, field_failures
from avdag.core.captioning.caption_quality import FLAGS, caption_quality, caption_quality_markdown
from avdag.core.captioning.model import CaptionSource
from avdag.core.common.labels import FIELD_COUNT
from avdag.defs.pipeline.partitions import FOLLOW_NEW_CLIPS, clip_batches
from avdag.defs.pipeline.pools import GPU_POOL, GPU_STEP_TAGS
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import OPTIONAL_INPUT
from avdag.resources.storage import StateStoreResource


def _caption_metadata(frame: pd.DataFrame, raw_clips: pd.DataFrame) -> dict[str, Any]:
    parsed = frame["parsed_json"].notna()
    quality = caption_quality(frame, raw_clips)
    return {
        "clips": len(frame),
        "parsed": int(parsed.sum()),
        "parse_failures": int((~parsed).sum()),
        "all_fields_ok": int((frame["fields_ok"] == FIELD_COUNT).sum()),
        "computed_now": int((~frame["cached"]).sum()),
        "not_captioned": int(frame["caption_error"].notna().sum()),
        "field_failures": dg.MetadataValue.md(field_failures(frame).to_markdown(index=False)),
        # before the judge is paid: answers cut at the token cap, empty, looping, or far longer than the label
        "caption_quality": dg.MetadataValue.md(caption_quality_markdown(quality)),
        **{f"answers_{flag}": int(quality[flag].sum()) if len(quality) else 0 for flag in FLAGS},
        "mean_new_tokens": float(frame["new_tokens"].mean()) if len(frame) else 0.0,
        "model_hash": dg.MetadataValue.text(str(frame["model_hash"].iloc[0]) if len(frame) else ""),
    }


def _run_captioning(
    context,
    captioner: CaptionerResource,
    state: StateStoreResource,
    model: str,
    raw_clips: pd.DataFrame,
    source: CaptionSource,
    **extra_metadata,
) -> dg.Output:
    engine = captioner.captioner(model, state)
    frame = caption_clips(
        engine,
        raw_clips,
        captioner.prompts(),
        state.store(),
        source,
        video=state.video,
        log=context.log.info,
        run_id=context.run.run_id,
    )
    return dg.Output(frame, metadata={**_caption_metadata(frame, raw_clips), **extra_metadata})


@dg.asset(
    partitions_def=clip_batches,
    io_manager_key="parquet_io",
    automation_condition=FOLLOW_NEW_CLIPS,
    group_name="captions",
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "parquet"},
)
def baseline_captions(
    context: dg.AssetExecutionContext,
    raw_clips: pd.DataFrame,
    captioner: CaptionerResource,
    state: StateStoreResource,
) -> dg.Output[pd.DataFrame]:
    """The base model answers the rubric for every clip of the batch (raw text and parsed JSON)."""
    return _run_captioning(context, captioner, state, captioner.base_model(state), raw_clips, "baseline")


@dg.asset(
    partitions_def=clip_batches,
    ins={"checkpoint_in_service": dg.AssetIn(metadata=OPTIONAL_INPUT)},
    io_manager_key="parquet_io",
    group_name="captions",
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "parquet"},
    output_required=False,  # nothing to do before the first promotion
)
def finetuned_captions(
    context: dg.AssetExecutionContext,
    raw_clips: pd.DataFrame,
    checkpoint_in_service: dict | None,
    captioner: CaptionerResource,
    state: StateStoreResource,
):
    """The same captioner, loading the checkpoint in service (the last promoted one), never a mere candidate."""
    if not checkpoint_in_service:
        context.log.info("no checkpoint in service yet: fine-tuned captions wait for the first promotion")
        return
    yield _run_captioning(
        context,
        captioner,
        state,
        checkpoint_in_service["path"],
        raw_clips,
        "finetuned",
        checkpoint_id=dg.MetadataValue.text(checkpoint_in_service["checkpoint_id"]),
        weights_hash=dg.MetadataValue.text(checkpoint_in_service["weights_hash"]),
    )
