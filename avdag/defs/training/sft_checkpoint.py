"""sft_checkpoint: fine-tune the base model on the train split of every batch."""

import hashlib
import json

import dagster as dg
import pandas as pd

from avdag.core.captioning.conversations import sft_messages
from avdag.core.common.atomic import write_bytes_atomic
from avdag.core.common.locks import file_lock
from avdag.core.common.model_identity import model_fingerprint
from avdag.core.reporting.charts import loss_curve_png, png_markdown
from avdag.core.training.embedded_loop import SftExample
from avdag.defs.pipeline.pools import GPU_POOL
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS
from avdag.resources.storage import ArtifactStoreResource
from avdag.resources.trainer import SftTrainerResource


def train_examples(
    raw_clips: dict[str, pd.DataFrame], split_manifest: pd.DataFrame, prompts, settings
) -> list[SftExample]:
    """Conversations for every train-split clip across batches, in a stable order."""
    examples = []
    for batch in sorted(raw_clips):
        sides = split_manifest.loc[split_manifest["batch"] == batch, ["clip_id", "split"]]
        clips = raw_clips[batch].merge(sides, on="clip_id")
        for clip in clips[clips["split"] == "train"].sort_values("clip_id").itertuples(index=False):
            messages = sft_messages(
                prompts.system_prompt,
                prompts.user_prompt,
                clip.local_path,
                json.loads(clip.label_json),
                fps=settings.fps,
                max_pixels=settings.max_pixels,
            )
            examples.append(SftExample(clip.clip_id, clip.local_path, messages))
    return examples


def _checkpoint_id(base_hash: str, settings: dict, examples: list[SftExample], prompt_hash: str) -> str:
    """Versions a checkpoint by everything that shapes it: base weights, config, train split, prompts."""
    payload = json.dumps(
        [base_hash, settings, [(e.clip_id, e.messages[-1]["content"]) for e in examples], prompt_hash], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dg.asset(
    ins={"raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS)},
    io_manager_key="json_io",
    group_name="training",
    pool=GPU_POOL,
    kinds={"pytorch", "safetensors"},
)
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    raw_clips: dict,
    split_manifest: pd.DataFrame,
    captioner: CaptionerResource,
    trainer: SftTrainerResource,
    artifacts: ArtifactStoreResource,
) -> dg.Output[dict]:
    """SFT on the train split: loss on assistant tokens only; safetensors + processor saved."""
    prompts = captioner.prompts()
    settings = trainer.settings()
    examples = train_examples(raw_clips, split_manifest, prompts, settings)
    base_model = captioner.base_model_path()
    base_hash = model_fingerprint(base_model)
    checkpoint_id = _checkpoint_id(base_hash, settings.as_dict(), examples, prompts.caption_hash)
    output_dir = artifacts.path("checkpoints", f"sft-{checkpoint_id}")
    record_path = output_dir / "avdag_training.json"
    # One trainer per checkpoint id, across runs and processes: a run that waited here reuses
    # what the holder trained instead of training (and installing) the same folder again.
    with file_lock(output_dir):
        losses, seconds, status = _train_or_reuse(
            context, trainer, base_model, examples, settings, checkpoint_id, output_dir, record_path
        )
    info = {
        "path": str(output_dir),
        "checkpoint_id": checkpoint_id,
        "weights_hash": model_fingerprint(str(output_dir)),
        "base_model": base_model,
        "base_model_hash": base_hash,
        "prompt_hash": prompts.caption_hash,
        "split_manifest_hash": manifest_hash(split_manifest),
        "train_clips": [e.clip_id for e in examples],
        "settings": settings.as_dict(),
        "losses": [list(map(float, pair)) for pair in losses],
        "seconds": seconds,
        "trained_by_run": context.run.run_id if status == "trained" else None,
    }
    png = loss_curve_png(losses)
    write_bytes_atomic(output_dir.with_name(output_dir.name + ".loss_curve.png"), png)
    return dg.Output(
        info,
        metadata={
            "status": status,
            "trainer": type(trainer).__name__,
            "checkpoint_id": dg.MetadataValue.text(checkpoint_id),
            "split_manifest_hash": dg.MetadataValue.text(info["split_manifest_hash"]),
            "train_clips": len(examples),
            "final_loss": float(losses[-1][1]) if losses else float("nan"),
            "first_loss": float(losses[0][1]) if losses else float("nan"),
            "train_seconds": float(seconds),
            "weights_hash": dg.MetadataValue.text(info["weights_hash"]),
            "checkpoint_path": dg.MetadataValue.path(str(output_dir)),  # "path" is the IO manager's
            "loss_curve": dg.MetadataValue.md(png_markdown(png, "loss curve")),
        },
    )


def manifest_hash(split_manifest: pd.DataFrame) -> str:
    """The split manifest's identity: which clip (and content) sits on which side, in a stable order."""
    rows = split_manifest[["batch", "clip_id", "sha256", "split"]].astype(str).sort_values(["batch", "clip_id"])
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]


def _train_or_reuse(context, trainer, base_model, examples, settings, checkpoint_id, output_dir, record_path):
    """(losses, seconds, "trained" | "cached"); called holding the checkpoint's lock."""
    if record_path.exists():
        context.log.info(f"checkpoint {checkpoint_id} already trained; reusing {output_dir}")
        record = json.loads(record_path.read_text())
        return record["losses"], record.get("seconds", 0.0), "cached"
    context.log.info(
        f"training {checkpoint_id} with {type(trainer).__name__} on {len(examples)} clips from {base_model}: "
        f"{settings.as_dict()}"
    )

    def progress(p: dict) -> None:
        first = p["step"] == p.get("resumed_from", 0) + 1
        if first and p.get("resumed_from"):
            context.log.info(f"resumed from the training state saved at step {p['resumed_from']}")
        if first or p["step"] % 10 == 0 or p["step"] == p["steps"]:
            context.log.info(
                f"step {p['step']}/{p['steps']} loss {p['loss']:.4f} "
                f"elapsed {p['elapsed_s']:.0f}s ETA {p['eta_s']:.0f}s"
            )

    result = trainer.train(base_model, examples, output_dir, progress)
    return result.losses, result.seconds, "trained"
