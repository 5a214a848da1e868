"""Drives in, clips out, through Dagster: raw_clips on a batch holding a drive, a bad drive and a clip.

The drive's clips are ordinary raw_clips rows (stored in the state store, fetched by URL like any
clip) with their drive and time range; the bad drive is one quarantine record with the reason; a
re-run cuts nothing and registers nothing new.
"""

from __future__ import annotations

import json
import sqlite3

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.common.state_store import file_sha256
from avdag.core.ingest.drive_clipping import drive_id_for
from avdag.core.ingest.landing import LABEL_SUFFIX, READY_MARKER, VIDEO_SUFFIX
from avdag.definitions import defs
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.storage import StateStoreResource
from avdag_tests.support.bad_inputs import encode_clip, real_label
from avdag_tests.support.media import cut_tail, encode_drive
from avdag_tests.support.pipeline_helpers import small_resources

BATCH = "drives-1"


def registry_rows(path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        tables = ("avdag_clips", "avdag_clip_sources")
        return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)


def test_raw_clips_cuts_drives_quarantines_a_bad_one_and_reruns_register_nothing(tmp_path):
    landing = tmp_path / "landing"
    batch_dir = landing / BATCH
    (batch_dir / "drives").mkdir(parents=True)
    (batch_dir / "videos").mkdir()
    (batch_dir / "metas").mkdir()
    drive = encode_drive(batch_dir / "drives" / "morning_commute.mp4", seconds=22, gop=20)
    bad = encode_drive(tmp_path / "bad.mp4", seconds=12, gop=20, seed=3)
    (batch_dir / "drives" / "cut_off.mp4").write_bytes(cut_tail(bad, 0.3))
    encode_clip(batch_dir / "videos" / f"uploaded{VIDEO_SUFFIX}")
    drive_id = drive_id_for(file_sha256(drive))
    labelled = f"{drive_id}-t0000-0010"  # a label names a drive clip by its id
    (batch_dir / "metas" / f"{labelled}{LABEL_SUFFIX}").write_text(json.dumps(real_label()))
    (batch_dir / READY_MARKER).touch()

    registry_db = tmp_path / "registry.sqlite"
    state = StateStoreResource(url=str(tmp_path / "state"), scratch_dir=str(tmp_path / "scratch"))
    resources = small_resources(
        str(landing), state=state, clip_registry=ClipRegistryResource(db_url=sqlite_url(registry_db))
    )

    def materialize(instance):
        result = dg.materialize(
            list(defs.assets),
            selection=["raw_clips", "clip_quarantine"],
            partition_key=BATCH,
            resources=resources,
            instance=instance,
        )
        assert result.success
        meta = instance.fetch_materializations(dg.AssetKey("raw_clips"), limit=1).records[0]
        return (
            result.output_for_node("raw_clips", "raw_clips"),
            result.output_for_node("raw_clips", "clip_quarantine"),
            meta.asset_materialization.metadata,
        )

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        clips, quarantine, meta = materialize(instance)
        after_first = registry_rows(registry_db)
        clips2, quarantine2, meta2 = materialize(instance)

    rows = clips.set_index("clip_id")
    # 22 s at 10 s clips with a 3 s minimum tail: 0-10, then 10-22 (the 2 s tail merged in).
    cut = [f"{drive_id}-t0000-0010", f"{drive_id}-t0010-0022"]
    assert sorted(rows.index) == sorted(["uploaded", *cut])
    assert rows.loc[cut, ["drive_start_s", "drive_end_s"]].values.tolist() == [[0.0, 10.0], [10.0, 22.0]]
    assert rows.loc[cut, "duration_s"].tolist() == pytest.approx([10.0, 12.0], abs=0.05)
    assert set(rows.loc[cut, "drive_id"]) == {drive_id}
    assert set(rows.loc[cut, "drive_url"]) == {str(drive)}
    assert set(rows.loc[cut, "drive_sha256"]) == {file_sha256(drive)}
    for clip_id in cut:  # stored in the state store, content-addressed, and really that content
        url = rows.loc[clip_id, "source_url"]
        assert url == str(tmp_path / "state" / "drive_clips" / f"{rows.loc[clip_id, 'sha256']}.mp4")
        assert state.video(url, rows.loc[clip_id, "sha256"]).is_file()
    assert isinstance(rows.loc[labelled, "label_json"], str) and not isinstance(rows.loc[cut[1], "label_json"], str)
    assert rows.loc["uploaded", ["drive_id", "drive_start_s"]].isna().all()  # an uploaded clip has no drive

    assert quarantine[["file", "check"]].values.tolist() == [[str(batch_dir / "drives" / "cut_off.mp4"), "truncated"]]
    assert "drive cut_off: truncated: the stream ends at" in quarantine["reason"].item()
    assert meta["drives_cut"].value == 1 and meta["drive_clips"].value == 2

    # The re-run cuts nothing, gives the same rows and quarantine, and the registry gains nothing.
    assert clips2.equals(clips) and quarantine2.equals(quarantine)
    assert (meta2["drives_cut"].value, meta2["drives_reused"].value, meta2["drive_clips_reused"].value) == (0, 1, 2)
    assert registry_rows(registry_db) == after_first == (3, 3)
