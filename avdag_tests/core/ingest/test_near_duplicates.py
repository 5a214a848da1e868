"""Near-duplicates by perceptual signature: copies of the real clip match, different footage does not.

The copies are made here with ffmpeg from the real dashcam clip: re-encoded at another CRF, rescaled
to 640x360, trimmed by 1 s at the start. The non-matches are the real clip mirrored and synthetic
scenes. Run with -s to see the table of distances.
"""

from __future__ import annotations

import random
import shutil
import subprocess

import pandas as pd
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.ingest.landing import READY_MARKER, VIDEO_SUFFIX, LandingZone
from avdag.core.ingest.near_duplicates import NEAR_DUPLICATE_BITS, SignatureIndex, clip_signature, signature_distance
from avdag.core.ingest.registry import ClipRegistry
from avdag.core.ingest.splits import assign_splits, leaks, split_for
from avdag.core.ingest.upload_batch import IngestLimits, ingest_batch
from avdag.demo.sample_data import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import generate_sample_batch

REAL = REAL_CLIP_DIR / f"{REAL_CLIP_ID}{VIDEO_SUFFIX}"
DERIVED = {  # name -> ffmpeg arguments between the input and the output
    "crf40": ["-c:v", "libx264", "-crf", "40"],
    "640x360": ["-vf", "scale=640:360", "-c:v", "libx264"],
    "mirrored": ["-vf", "hflip", "-c:v", "libx264"],
}
# (a, b, expected match)
PAIRS = [
    ("real", "crf40", True),
    ("real", "640x360", True),
    ("real", "trim1s", True),
    ("640x360", "trim1s", True),
    ("real", "mirrored", False),
    ("real", "synthetic_a", False),
    ("real", "synthetic_b", False),
    ("synthetic_a", "synthetic_b", False),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("near_dup")
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "the ffmpeg binary is needed to derive copies of the real clip"
    paths = {"real": REAL}
    for name, args in DERIVED.items():
        paths[name] = folder / f"{name}.mp4"
        subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(REAL), *args, "-preset", "ultrafast", str(paths[name])], check=True
        )
    paths["trim1s"] = folder / "trim1s.mp4"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-ss",
            "1",
            "-i",
            str(REAL),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(paths["trim1s"]),
        ],
        check=True,
    )
    ids = generate_sample_batch(folder, "synthetic", 2, seed=7)
    for name, clip_id in zip(("synthetic_a", "synthetic_b"), ids):
        paths[name] = folder / "synthetic" / "videos" / f"{clip_id}{VIDEO_SUFFIX}"
    return paths


@pytest.fixture(scope="module")
def signatures(clips) -> dict[str, str]:
    return {name: clip_signature(path) for name, path in clips.items()}


def test_copies_match_and_different_footage_does_not(signatures):
    rows = []
    for a, b, expected in PAIRS:
        distance = signature_distance(signatures[a], signatures[b])
        rows.append((f"{a} vs {b}", round(distance, 2), distance <= NEAR_DUPLICATE_BITS, expected))
    table = pd.DataFrame(rows, columns=["pair", "distance_bits", "match", "expected"])
    print(f"\nnear-duplicate threshold {NEAR_DUPLICATE_BITS} bits\n" + table.to_markdown(index=False))
    assert (table["match"] == table["expected"]).all(), table
    assert len(signatures["real"]) == 16 * 16  # 16 frames x 64 bits, as hex
    assert signature_distance(signatures["real"], signatures["real"]) == 0


def test_the_registry_flags_the_later_clip_against_the_earlier_one_across_batches(signatures, tmp_path):
    registry = ClipRegistry(sqlite_url(tmp_path / "reg.sqlite"))
    first = registry.signature_record("b1", "real", "sha-real", lambda: signatures["real"])
    assert (first.twin_clip_id, first.distance) == (None, None)
    copy = registry.signature_record("b2", "copy", "sha-copy", lambda: signatures["640x360"])
    assert copy.twin_clip_id == "real" and copy.distance <= NEAR_DUPLICATE_BITS
    other = registry.signature_record("b2", "other", "sha-other", lambda: signatures["synthetic_a"])
    assert other.distance > NEAR_DUPLICATE_BITS
    # Fixed at first registration: asked again (a re-run, another process) nothing is decoded or changed.
    again = ClipRegistry(sqlite_url(tmp_path / "reg.sqlite"))
    assert again.signature_record("b1", "real", "sha-real", lambda: pytest.fail("decoded again")) == first
    assert again.signature_record("b2", "copy", "sha-copy", lambda: pytest.fail("decoded again")) == copy


def test_ingest_flags_a_copy_and_splits_keep_it_with_its_twin(clips, tmp_path):
    batch_dir = tmp_path / "landing" / "b"
    (batch_dir / "videos").mkdir(parents=True)
    for name in ("real", "640x360", "synthetic_a"):
        shutil.copyfile(clips[name], batch_dir / "videos" / f"{name}{VIDEO_SUFFIX}")
    (batch_dir / READY_MARKER).touch()
    zone = LandingZone(str(tmp_path / "landing"))
    registry = ClipRegistry(sqlite_url(tmp_path / "reg.sqlite"))
    rows, _ = ingest_batch(zone, zone.list_batch("b"), tmp_path / "cache", registry=registry)
    by_id = {row["clip_id"]: row for row in rows}
    # "640x360" sorts (and registers) before "real", so the rescaled copy is the twin.
    assert by_id["real"]["near_duplicate_of"] == "640x360"
    assert by_id["real"]["near_duplicate_distance"] <= NEAR_DUPLICATE_BITS
    assert by_id["real"]["near_duplicate_group"] == "640x360"
    assert (
        by_id["synthetic_a"]["near_duplicate_of"] is None
        and by_id["synthetic_a"]["near_duplicate_group"] == "synthetic_a"
    )
    assert by_id["640x360"]["near_duplicate_of"] is None
    # Threshold off: no signatures, no flags.
    off, _ = ingest_batch(
        zone, zone.list_batch("b"), tmp_path / "cache2", limits=IngestLimits(near_duplicate_bits=None)
    )
    assert all(row["signature"] is None and row["near_duplicate_of"] is None for row in off)


def test_a_near_duplicate_takes_its_groups_side_and_the_leak_check_sees_groups():
    # Find a twin id that hashes to train and a copy id that would hash to eval on its own.
    twin = next(f"twin-{i}" for i in range(1000) if split_for(f"twin-{i}", 0.5) == "train")
    copy = next(f"copy-{i}" for i in range(1000) if split_for(f"copy-{i}", 0.5) == "eval")
    sides = assign_splits([(twin, True), (copy, True)], 0.5, groups={copy: twin})
    assert sides == {twin: "train", copy: "train"}  # never eval while its twin trains
    manifest = pd.DataFrame(
        {
            "clip_id": [twin, copy],
            "sha256": ["a", "b"],
            "split": ["train", "eval"],
            "near_duplicate_group": [twin, twin],
        }
    )
    assert leaks(manifest) == [f"near-duplicate group {twin}"]
    assert leaks(manifest.assign(split=["train", "train"])) == []
    assert leaks(manifest.drop(columns="near_duplicate_group")) == []  # manifests from before groups still load


def _random_signature(rng: random.Random, frames: int) -> str:
    return "".join(f"{rng.getrandbits(64):016x}" for _ in range(frames))


def test_the_index_gives_every_pairwise_distance_and_the_earliest_of_equal_twins():
    """The vectorized search against `signature_distance` pair by pair, over signatures of 2 to 16
    frames (short clips sign fewer frames), across more than one chunk of candidates."""
    rng = random.Random(7)
    pairs = [(f"sha-{n}", _random_signature(rng, rng.choice([2, 4, 8, 16]))) for n in range(5000)]
    near = pairs[123][1][:-1] + ("0" if pairs[123][1][-1] != "0" else "1")  # one bit or so from sha-123
    pairs.insert(4500, ("sha-copy", pairs[123][1]))  # an exact copy registered later: a tie at 0
    index = SignatureIndex(pairs)
    for query in (_random_signature(rng, 16), _random_signature(rng, 2), near, pairs[123][1]):
        expected = [signature_distance(query, other) for _, other in pairs]
        assert index.distances(query).tolist() == expected
    assert index.nearest(pairs[123][1]) == ("sha-123", 0.0), "ties go to the earliest"
    assert index.nearest(pairs[123][1], exclude="sha-123") == ("sha-copy", 0.0)
    assert index.nearest(near)[0] == "sha-123"
    assert SignatureIndex().nearest(near) is None
    assert SignatureIndex([("only", near)]).nearest(near, exclude="only") is None
