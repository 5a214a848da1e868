"""Stable train/eval assignment: a clip's side depends only on its id.

Hashing the id (not shuffling the batch) means a clip never changes side when more data
arrives, so the fine-tuned model is never evaluated on a clip it was trained on.
"""

from __future__ import annotations

import hashlib
from typing import Literal

EVAL_FRACTION = 0.1
Split = Literal["train", "eval", "unlabelled"]


def split_for(clip_id: str, eval_fraction: float = EVAL_FRACTION) -> Literal["train", "eval"]:
    """'eval' for about `eval_fraction` of ids, else 'train' — the same answer forever."""
    bucket = int.from_bytes(hashlib.sha256(clip_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "eval" if bucket < eval_fraction else "train"


def assign_splits(
    clip_ids_with_label: list[tuple[str, bool]], eval_fraction: float = EVAL_FRACTION
) -> dict[str, Split]:
    """clip id -> 'train' | 'eval' | 'unlabelled' (unlabelled clips are captioned, never trained on)."""
    return {cid: split_for(cid, eval_fraction) if labelled else "unlabelled" for cid, labelled in clip_ids_with_label}


def leaks(manifest) -> list[str]:
    """Clip ids or content hashes found on both the train and the eval side (must be empty)."""
    found = []
    for key in ("clip_id", "sha256"):
        sides = manifest[manifest["split"].isin(["train", "eval"])].groupby(key)["split"].nunique()
        found += [f"{key} {value}" for value in sides[sides > 1].index]
    return found
