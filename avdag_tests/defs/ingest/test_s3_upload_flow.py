"""Uploads to a real S3 endpoint (moto's server on loopback): sensor tick -> partition + run ->
clips, captions and scores; uploads in progress wait; duplicates add nothing; cursors persist."""

import json

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.defs.ingest.landing_sensor import landing_zone_sensor
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import REAL_CLIP_ID, write_sample_batch
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.storage import LandingZoneResource
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, small_resources, small_run_config, state_with_tiny_model

BUCKET = "fleet-uploads"
LANDING = f"s3://{BUCKET}/landing"


@pytest.fixture(scope="module")
def own_state(tmp_path_factory, tiny_model_path, s3):
    """This module's own dedup registry, asset files and state store: other test modules ingest the same
    sample footage (the same clip ids), and a second copy of a clip's scores would break their lineage."""
    root = tmp_path_factory.mktemp("s3_flow_home")
    return {
        "clip_registry": ClipRegistryResource(db_url=sqlite_url(root / "registry.sqlite")),
        "state": state_with_tiny_model(str(root), tiny_model_path, s3.endpoint_url),  # the endpoint reads the clips
        "parquet_io": ParquetIOManager(base_dir=str(root / "assets")),
        "json_io": JsonIOManager(base_dir=str(root / "assets")),
    }


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("upload")
    ids = write_sample_batch(root, "drive-0001", n_synthetic=3, seed=0)
    return root / "drive-0001", ids


def _tick(s3, cursor=None):
    resource = LandingZoneResource(url=LANDING, s3_endpoint_url=s3.endpoint_url)
    return landing_zone_sensor(
        dg.build_sensor_context(
            cursor=cursor, instance=dg.DagsterInstance.ephemeral(), resources={"landing_zone": resource}
        )
    )


def _upload_without_marker(s3, local_dir, batch):
    keys = s3.upload_dir(local_dir, f"{BUCKET}/landing/{batch}")
    s3.fs().rm_file(f"{BUCKET}/landing/{batch}/_READY")  # as if the uploader had not finished
    return [k for k in keys if not k.endswith("_READY")]


@pytest.fixture(scope="module")
def instance():
    """This module's own Dagster instance: the partitions it adds (drive-0001-copy is never captioned) stay here."""
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def flow(s3, local_batch, own_state, instance):
    """Upload one batch in two steps, tick the sensor, and run what it asked for."""
    batch_dir, ids = local_batch
    s3.make_bucket(BUCKET)
    _upload_without_marker(s3, batch_dir, "drive-0001")
    waiting = _tick(s3)
    s3.put(f"{BUCKET}/landing/drive-0001/_READY", b"")
    ready = _tick(s3, cursor=waiting.cursor)
    for request in ready.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    (run_request,) = ready.run_requests
    result = dg.materialize(
        ALL_ASSETS,
        partition_key=run_request.partition_key,
        instance=instance,
        run_config=small_run_config(),
        resources=small_resources(LANDING, s3_endpoint_url=s3.endpoint_url, **own_state),
    )
    return {
        "waiting": waiting,
        "ready": ready,
        "result": result,
        "ids": ids,
        "instance": instance,
        "batch_dir": batch_dir,
    }


def test_upload_in_progress_is_ignored_until_ready(flow):
    assert not flow["waiting"].run_requests
    assert "drive-0001" in flow["waiting"].skip_reason.skip_message


def test_one_tick_adds_the_partition_and_requests_its_run(flow):
    ready = flow["ready"]
    assert [r.partition_key for r in ready.run_requests] == ["drive-0001"]
    (add,) = ready.dynamic_partitions_requests
    assert add.partitions_def_name == clip_batches.name and list(add.partition_keys) == ["drive-0001"]
    assert "drive-0001" in clip_batches.get_partition_keys(dynamic_partitions_store=flow["instance"])


def test_the_run_produces_clips_captions_and_scores_from_s3(flow):
    result, ids = flow["result"], flow["ids"]
    assert result.success
    clips = result.output_for_node("raw_clips", "raw_clips")
    assert set(clips["clip_id"]) == set(ids)
    assert clips["source_url"].str.startswith(f"{LANDING}/drive-0001/videos/").all()
    real = clips.set_index("clip_id").loc[REAL_CLIP_ID]
    assert (real.width, real.height) == (960, 540)
    assert set(result.output_for_node("baseline_captions")["clip_id"]) == set(ids)
    assert set(result.output_for_node("finetuned_captions")["clip_id"]) == set(ids)
    scores = result.output_for_node("finetuned_judge_scores")
    assert len(scores) and scores["source_url"].str.startswith("s3://").all()


def test_cursor_survives_a_new_sensor_context(flow, s3):
    again = _tick(s3, cursor=flow["ready"].cursor)
    assert not again.run_requests
    assert "1 batches known" in again.skip_reason.skip_message


def test_duplicate_upload_adds_nothing(flow, s3, own_state):
    """The same footage re-uploaded under another batch name: a new partition, but no new clip."""
    s3.upload_dir(flow["batch_dir"], f"{BUCKET}/landing/drive-0001-copy")
    tick = _tick(s3, cursor=flow["ready"].cursor)
    assert [r.partition_key for r in tick.run_requests] == ["drive-0001-copy"]
    instance = flow["instance"]
    instance.add_dynamic_partitions(clip_batches.name, ["drive-0001-copy"])
    run = dg.materialize(
        ALL_ASSETS,
        selection=["raw_clips", "clip_quarantine"],
        partition_key="drive-0001-copy",
        instance=instance,
        resources=small_resources(LANDING, s3_endpoint_url=s3.endpoint_url, **own_state),
    )
    assert run.output_for_node("raw_clips", "raw_clips").empty
    quarantine = run.output_for_node("raw_clips", "clip_quarantine")
    videos = quarantine[quarantine["file"].str.contains("/videos/")]
    assert len(videos) == len(flow["ids"]) and set(videos["check"]) == {"duplicate"}
    assert videos["reason"].str.contains("of batch drive-0001;").all()


def test_changed_reupload_is_reprocessed_identical_is_not(flow, s3):
    cursor = _tick(s3, cursor=flow["ready"].cursor).cursor  # absorb batches other tests uploaded
    s3.put(f"{BUCKET}/landing/drive-0001/_READY", b"again")  # identical content, marker re-written
    same = _tick(s3, cursor=cursor)
    assert not same.run_requests and "identical content" in same.skip_reason.skip_message
    label_key = f"{BUCKET}/landing/drive-0001/metas/{REAL_CLIP_ID}.label.json"
    label = json.loads(s3.fs().cat_file(label_key))
    s3.put(label_key, json.dumps(dict(label, driving_difficulty=2)).encode())
    s3.put(f"{BUCKET}/landing/drive-0001/_READY", b"changed")
    changed = _tick(s3, cursor=same.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["drive-0001"]
    assert changed.run_requests[0].run_key != flow["ready"].run_requests[0].run_key
