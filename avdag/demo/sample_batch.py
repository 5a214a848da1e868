"""The demo's sample batch: synthetic dashcam clips plus the real clip shipped with avdag."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from avdag.core.common.atomic import atomic_path
from avdag.core.ingest.landing import LABEL_SUFFIX, READY_MARKER, VIDEO_SUFFIX
from avdag.core.reporting.statistics import MIN_CLIPS_FOR_CONFIDENCE
from avdag.demo.sample_data import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import generate_sample_batch

# The demo batch holds out 35%, not the platform's 10%: at 10% its 101 clips leave 8 eval clips, too
# few for the comparison to mean anything; at 35% they leave 24 (and 77 to train on, not 93). Every
# clip is captioned either way, so the cost is the candidate evaluation captioning 2 x 16 more eval
# clips, 2-4 minutes on 2 CPU cores at 0.15-0.3 clips/s; the alternative, 10% of ~250 clips, would
# caption ~300 more (17-35 minutes).
DEMO_EVAL_FRACTION = 0.35


# The demo batch also lands this share of extra synthetic clips without labels: footage nobody has
# labelled yet, for `labeling_queue` to rank (they are captioned, never trained or evaluated on).
DEMO_UNLABELLED_SHARE = 0.1


def write_sample_batch(
    landing_root: Path, batch: str, n_synthetic: int, seed: int = 0, n_unlabelled: int = 0
) -> list[str]:
    """Write `n_synthetic` labelled synthetic clips, `n_unlabelled` more without labels and the real clip
    into `<landing_root>/<batch>/`, then `_READY`."""
    ids = generate_sample_batch(landing_root, batch, n_synthetic, seed=seed)
    if n_unlabelled:
        ids += _unlabelled_clips(landing_root / batch, n_unlabelled, seed=seed + 1)
    copy_real_clip(landing_root / batch)
    (landing_root / batch / READY_MARKER).touch()
    return ids + [REAL_CLIP_ID]


def demo_unlabelled_clips(n_synthetic: int) -> int:
    return int(n_synthetic * DEMO_UNLABELLED_SHARE)


def _unlabelled_clips(batch_dir: Path, count: int, seed: int) -> list[str]:
    """Synthetic clips of another seed (other ids and scenes) whose videos land without their labels."""
    with tempfile.TemporaryDirectory() as staging:
        ids = generate_sample_batch(Path(staging), "unlabelled", count, seed=seed)
        for clip_id in ids:
            target = batch_dir / "videos" / f"{clip_id}{VIDEO_SUFFIX}"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp:
                    shutil.copyfile(Path(staging) / "unlabelled" / "videos" / f"{clip_id}{VIDEO_SUFFIX}", tmp)
    return ids


def copy_real_clip(batch_dir: Path) -> None:
    for sub, suffix in (("videos", VIDEO_SUFFIX), ("metas", LABEL_SUFFIX)):
        target = batch_dir / sub / f"{REAL_CLIP_ID}{suffix}"
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(REAL_CLIP_DIR / f"{REAL_CLIP_ID}{suffix}", tmp)


def demo_eval_fraction(n_synthetic: int) -> float | None:
    """The demo batch's eval fraction: DEMO_EVAL_FRACTION when the batch is large enough to hold
    MIN_CLIPS_FOR_CONFIDENCE eval clips at it, else None (the platform's default, so a smoke run such
    as `avdag demo --clips 4` splits, trains and evaluates exactly as before)."""
    if (n_synthetic + 1) * DEMO_EVAL_FRACTION >= MIN_CLIPS_FOR_CONFIDENCE:
        return DEMO_EVAL_FRACTION
    return None
