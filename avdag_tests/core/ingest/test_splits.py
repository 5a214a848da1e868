"""Tests for avdag.core.ingest.splits: a clip's train/eval side depends only on its id."""

from __future__ import annotations

import hashlib

import pytest

from avdag.core.ingest.splits import EVAL_FRACTION, assign_splits, split_for

IDS = [f"clip-{i:05d}" for i in range(5000)]


def test_default_eval_fraction_is_ten_percent():
    assert EVAL_FRACTION == pytest.approx(0.1)


def test_split_is_deterministic_and_only_train_or_eval():
    first = [split_for(cid) for cid in IDS]
    second = [split_for(cid) for cid in reversed(IDS)][::-1]
    assert first == second
    assert set(first) == {"train", "eval"}


def test_split_matches_sha256_bucket_of_the_id():
    """Independent re-derivation: first 8 bytes of sha256(id) as a fraction of 2**64."""
    for cid in IDS[:500]:
        bucket = int(hashlib.sha256(cid.encode()).hexdigest()[:16], 16) / 2**64
        assert split_for(cid) == ("eval" if bucket < 0.1 else "train")


def test_about_ten_percent_eval_over_5000_ids():
    n_eval = sum(split_for(cid) == "eval" for cid in IDS)
    assert 0.08 * len(IDS) <= n_eval <= 0.12 * len(IDS)


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
def test_fraction_is_respected(fraction):
    n_eval = sum(split_for(cid, fraction) == "eval" for cid in IDS)
    assert abs(n_eval / len(IDS) - fraction) < 0.03


def test_extreme_fractions():
    assert all(split_for(cid, 0.0) == "train" for cid in IDS[:200])
    assert all(split_for(cid, 1.0) == "eval" for cid in IDS[:200])


def test_raising_eval_fraction_only_moves_train_to_eval():
    fractions = [0.05, 0.1, 0.15, 0.3]
    previous = {cid: split_for(cid, fractions[0]) for cid in IDS}
    for fraction in fractions[1:]:
        current = {cid: split_for(cid, fraction) for cid in IDS}
        moved = {cid for cid in IDS if current[cid] != previous[cid]}
        assert moved, "a larger fraction should move some ids"
        assert all(previous[cid] == "train" and current[cid] == "eval" for cid in moved)
        previous = current


def test_split_does_not_depend_on_batch_composition():
    alone = assign_splits([(cid, True) for cid in IDS[:50]])
    with_more = assign_splits([(cid, True) for cid in IDS])
    assert all(with_more[cid] == side for cid, side in alone.items())


def test_assign_splits_marks_unlabelled_clips():
    pairs = [(cid, i % 3 != 0) for i, cid in enumerate(IDS[:300])]
    sides = assign_splits(pairs)
    assert list(sides) == [cid for cid, _ in pairs]
    for cid, labelled in pairs:
        if labelled:
            assert sides[cid] == split_for(cid)
        else:
            assert sides[cid] == "unlabelled"
    assert {"train", "eval", "unlabelled"} == set(sides.values())


def test_assign_splits_passes_eval_fraction():
    sides = assign_splits([(cid, True) for cid in IDS[:100]], eval_fraction=1.0)
    assert set(sides.values()) == {"eval"}


def test_assign_splits_empty():
    assert assign_splits([]) == {}
