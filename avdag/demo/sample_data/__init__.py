"""The real dashcam clip shipped with avdag, and its human label (see real/SOURCE.md)."""

from importlib.resources import files
from pathlib import Path

REAL_CLIP_ID = "solidWhiteRight"
REAL_CLIP_DIR = Path(str(files(__name__) / "real"))
REAL_CLIP = REAL_CLIP_DIR / f"{REAL_CLIP_ID}.camera_front_wide_120fov.mp4"
REAL_LABEL = REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json"
