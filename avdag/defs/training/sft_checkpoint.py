"""sft_checkpoint: fine-tune the base model on the train split of every batch."""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd

from avdag.core.captioning.conversations import sft_messages
from avdag.core.captioning.model_family import BASE_FAMILY_KEY
from avdag.core.common.atomic import write_bytes_atomic
from avdag.core.common.labels import format_label_as_answer
from avdag.core.common.locks import file_lock
from avdag.core.common.model_identity import model_fingerprint
from avdag.core.reporting.charts import loss_curve_png, png_markdown
from avdag.core.reporting.lineage import CHECKPOINTS, TRAINING_RECORD
from avdag.core.training.embedded_loop import SftExample
from avdag.defs.pipeline.pools import GPU_POOL, TRAINING_STEP_TAGS
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS
from avdag.resources.storage import StateStoreResource
from avdag.resources.trainer import SftTrainerResource


def train_split(raw_clips: dict[str, pd.DataFrame], split_manifest: pd.DataFrame) -> list:
    """Every train-split clip across batches (raw_clips rows), in a stable order."""
    clips = []
    for batch in sorted(raw_clips):
        sides = split_manifest.loc[split_manifest["batch"] == batch, ["clip_id", "split"]]
        rows = raw_clips[batch].merge(sides, on="clip_id")
        clips.extend(rows[rows["split"] == "train"].sort_values("clip_id").itertuples(index=False))
    return clips


def train_examples(clips: list, prompts, settings, video: Callable[[str, str], Path]) -> list[SftExample]:
    """Conversations for the train clips, each video fetched onto this node by `video(source_url, sha256)`."""
    examples = []
    for clip in clips:
        path = str(video(clip.source_url, clip.sha256))
        messages = sft_messages(
            prompts.system_prompt,
            prompts.user_prompt,
            path,
            json.loads(clip.label_json),
            fps=settings.fps,
            max_pixels=settings.max_pixels,
        )
        examples.append(SftExample(clip.clip_id, path, messages))
    return examples


def _checkpoint_id(base_hash: str, settings: dict, clips: list, prompt_hash: str) -> str:
    """Versions a checkpoint by everything that shapes it: base weights, config, train split (each clip's
    id and trained answer), prompts. Never where the videos sit on a node."""
    answers = [(c.clip_id, format_label_as_answer(json.loads(c.label_json))) for c in clips]
    payload = json.dumps([base_hash, settings, answers, prompt_hash], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dg.asset(
    ins={"raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS)},
    io_manager_key="json_io",
    group_name="training",
    pool=GPU_POOL,
    op_tags=TRAINING_STEP_TAGS,
    kinds={"pytorch", "safetensors"},
)
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    raw_clips: dict,
    split_manifest: pd.DataFrame,
    captioner: CaptionerResource,
    trainer: SftTrainerResource,
    state: StateStoreResource,
) -> dg.Output[dict]:
    """SFT on the train split: loss on assistant tokens only; safetensors + processor stored in the state store.

    The record names the checkpoint by its state-store URL (`path`) and weights hash; whoever
    captions with it fetches the folder onto its own node.
    """
    prompts = captioner.prompts()
    clips = train_split(raw_clips, split_manifest)
    base_model = captioner.base_model(state)
    base_local = state.local_model(base_model)
    family = trainer.check_base_model(base_local)  # an unsupported model_type stops here, before any work
    settings = trainer.settings_for(family)  # frames budgeted in the family's own tokens
    base_hash = model_fingerprint(base_local)
    checkpoint_id = _checkpoint_id(base_hash, settings.as_dict(), clips, prompts.caption_hash)
    store, scratch = state.store(), state.scratch()
    key = f"{CHECKPOINTS}/sft-{checkpoint_id}"
    output_dir = store.scratch_path(key, scratch)  # the stored folder itself on a local store
    # One trainer per checkpoint id, across runs and processes on a node: a run that waited here
    # reuses what the holder trained and stored instead of training the same folder again.
    with file_lock(output_dir):
        losses, seconds, status = _train_or_reuse(
            context, trainer, base_local, clips, prompts, settings, state, checkpoint_id, key, output_dir, family.name
        )
    info = {
        "path": store.uri(key),
        "checkpoint_id": checkpoint_id,
        "weights_hash": model_fingerprint(str(store.fetch_folder(key, scratch))),
        "base_model": base_model,
        "base_model_hash": base_hash,
        "base_family": family.name,
        "prompt_hash": prompts.caption_hash,
        "split_manifest_hash": manifest_hash(split_manifest),
        "train_clips": [c.clip_id for c in clips],
        "settings": settings.as_dict(),
        "losses": [list(map(float, pair)) for pair in losses],
        "seconds": seconds,
        "trained_by_run": context.run.run_id if status == "trained" else None,
    }
    png = loss_curve_png(losses)
    store.write_bytes(f"{key}.loss_curve.png", png)
    return dg.Output(
        info,
        metadata={
            "status": status,
            "trainer": type(trainer).__name__,
            "base_family": family.name,
            "checkpoint_id": dg.MetadataValue.text(checkpoint_id),
            "split_manifest_hash": dg.MetadataValue.text(info["split_manifest_hash"]),
            "train_clips": len(clips),
            "final_loss": float(losses[-1][1]) if losses else float("nan"),
            "first_loss": float(losses[0][1]) if losses else float("nan"),
            "train_seconds": float(seconds),
            "weights_hash": dg.MetadataValue.text(info["weights_hash"]),
            "checkpoint_path": dg.MetadataValue.path(info["path"]),  # "path" is the IO manager's
            "loss_curve": dg.MetadataValue.md(png_markdown(png, "loss curve")),
        },
    )


def manifest_hash(split_manifest: pd.DataFrame) -> str:
    """The split manifest's identity: which clip (and content) sits on which side, in a stable order."""
    rows = split_manifest[["batch", "clip_id", "sha256", "split"]].astype(str).sort_values(["batch", "clip_id"])
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]


def _train_or_reuse(
    context, trainer, base_local, clips, prompts, settings, state, checkpoint_id, key, output_dir, base_family
):
    """(losses, seconds, "trained" | "cached"), the checkpoint stored under `key`; called holding its lock."""
    store = state.store()
    if store.is_complete(key):
        context.log.info(f"checkpoint {checkpoint_id} already trained; reusing {store.uri(key)}")
        record = store.read_json(f"{key}/{TRAINING_RECORD}")
        return record["losses"], record.get("seconds", 0.0), "cached"
    if (output_dir / TRAINING_RECORD).exists():  # trained on this node before, not stored yet (a killed upload)
        record = json.loads((output_dir / TRAINING_RECORD).read_text())
        store.put_folder(output_dir, key)
        return record["losses"], record.get("seconds", 0.0), "cached"
    examples = train_examples(clips, prompts, settings, state.video)
    context.log.info(
        f"training {checkpoint_id} with {type(trainer).__name__} on {len(examples)} clips from {base_local}: "
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

    result = trainer.train(base_local, examples, output_dir, progress)
    _record_base_family(output_dir, base_family)
    store.put_folder(output_dir, key)  # every file, then the marker
    return result.losses, result.seconds, "trained"


def _record_base_family(output_dir: Path, base_family: str) -> None:
    """Name the base's family in the checkpoint's training record (whichever trainer wrote it), so the
    checkpoint is never loaded as the other family; a trainer that recorded another one is a bug."""
    path = output_dir / TRAINING_RECORD
    record = json.loads(path.read_text())
    if record.setdefault(BASE_FAMILY_KEY, base_family) != base_family:
        raise RuntimeError(f"{path} names base family {record[BASE_FAMILY_KEY]!r}, the base model is {base_family!r}")
    write_bytes_atomic(path, json.dumps(record, indent=2).encode())
