"""A stable identity for a model: what every caption and score names as its source.

A local checkpoint is identified by the sha256 of its weight files (so two copies of the same
fine-tune agree, and a retrain that changes one weight does not); a hub id by id and revision.
The hash is cached beside the weights, keyed by file sizes and mtimes, because a 7B model is
16 GB to read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CACHE_NAME = ".avdag_weights_sha256.json"


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over all *.safetensors files of a directory, in name order."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = model_dir / _CACHE_NAME
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        pass  # read-only model folders still get a hash, just not a cached one
    return value


def model_fingerprint(model_path: str) -> str:
    """'sha256:<hex16>' for a local checkpoint, 'hub:<id>' for a hub id."""
    path = Path(model_path)
    if path.is_dir():
        return "sha256:" + weights_sha256(path)[:16]
    return f"hub:{model_path}"


def model_type(model_path: str | Path) -> str | None:
    """config.json's model_type of a local checkpoint (its family, e.g. 'qwen2_5_vl'); None when unreadable.

    For lineage and records only: loading checks the family strictly (avdag.core.captioning.model_family).
    """
    try:
        return json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
