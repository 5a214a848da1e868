"""Stable train/eval assignment: a clip's side depends only on its id.

Hashing the id (not shuffling the batch) means a clip never changes side when more data
arrives, so the fine-tuned model is never evaluated on a clip it was trained on.

Near-duplicates (a re-encode, resize or trim of another clip; see `near_duplicates.py`) are
hashed by their group's first clip instead of their own id, so a whole group lands on one side:
a near-duplicate of a train clip is train, never eval (and one of an eval clip is eval). `leaks`
checks the groups as well as ids and hashes.
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
    clip_ids_with_label: list[tuple[str, bool]],
    eval_fraction: float = EVAL_FRACTION,
    groups: dict[str, str] | None = None,
) -> dict[str, Split]:
    """clip id -> 'train' | 'eval' | 'unlabelled' (unlabelled clips are captioned, never trained on).

    `groups` maps a near-duplicate to its group's first clip, whose id decides the side for all of them.
    """
    groups = groups or {}
    return {
        cid: split_for(groups.get(cid) or cid, eval_fraction) if labelled else "unlabelled"
        for cid, labelled in clip_ids_with_label
    }


GROUP_COLUMN = "near_duplicate_group"


def leaks(manifest) -> list[str]:
    """Clip ids, content hashes or near-duplicate groups found on both the train and the eval side (must be empty)."""
    sided = manifest[manifest["split"].isin(["train", "eval"])]
    if GROUP_COLUMN in sided:  # partitions split before near-duplicates were flagged: each clip its own group
        sided = sided.assign(**{GROUP_COLUMN: sided[GROUP_COLUMN].fillna(sided["clip_id"])})
    found = []
    for key in ("clip_id", "sha256", GROUP_COLUMN):
        if key not in sided:
            continue
        sides = sided.groupby(key)["split"].nunique()
        label = "near-duplicate group" if key == GROUP_COLUMN else key
        found += [f"{label} {value}" for value in sides[sides > 1].index]
    return found
