"""The demo's sample batch: synthetic dashcam clips plus the real clip shipped with avdag."""

from __future__ import annotations

import shutil
from pathlib import Path

from avdag.core.common.atomic import atomic_path
from avdag.core.ingest.landing import LABEL_SUFFIX, READY_MARKER, VIDEO_SUFFIX
from avdag.demo.sample_data import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import generate_sample_batch


def write_sample_batch(landing_root: Path, batch: str, n_synthetic: int, seed: int = 0) -> list[str]:
    """Write `n_synthetic` synthetic clips and the real clip into `<landing_root>/<batch>/`, then `_READY`."""
    ids = generate_sample_batch(landing_root, batch, n_synthetic, seed=seed)
    copy_real_clip(landing_root / batch)
    (landing_root / batch / READY_MARKER).touch()
    return ids + [REAL_CLIP_ID]


def copy_real_clip(batch_dir: Path) -> None:
    for sub, suffix in (("videos", VIDEO_SUFFIX), ("metas", LABEL_SUFFIX)):
        target = batch_dir / sub / f"{REAL_CLIP_ID}{suffix}"
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(REAL_CLIP_DIR / f"{REAL_CLIP_ID}{suffix}", tmp)
