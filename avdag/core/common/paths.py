"""Where avdag keeps its state: everything lives under one home folder ($AVDAG_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".avdag"


def avdag_home() -> Path:
    """$AVDAG_HOME, default `.avdag` in the working directory, made absolute."""
    return Path(os.environ.get("AVDAG_HOME", DEFAULT_HOME)).expanduser().resolve()


def dagster_home() -> Path:
    return avdag_home() / "dagster"


def default_landing_url() -> str:
    return str(avdag_home() / "landing")
