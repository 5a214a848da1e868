"""Files avdag ships as package data, found with importlib.resources (editable or wheel install alike).

The repository's top-level `prompts/` and `workspace.yaml` stay the source; `avdag/prompts` and
`avdag/workspace.yaml` are links to them, which a wheel build turns into copies.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _package_path(*parts: str) -> Path:
    path = Path(str(files("avdag").joinpath(*parts))).resolve()
    if not path.exists():
        raise FileNotFoundError(f"avdag package data missing: {path} (a broken install?)")
    return path


def project_prompts_dir() -> Path:
    """The project's prompt folder: captioning and judge prompts, judge questions."""
    return _package_path("prompts")


def workspace_file() -> Path:
    """The Dagster workspace file `avdag ui` starts `dagster dev` with."""
    return _package_path("workspace.yaml")


def instance_config_file() -> Path:
    """The Dagster instance config avdag ships (run queue limits per stage)."""
    return _package_path("dagster.yaml")
