"""The upload sensor, evaluated with build_sensor_context over a real local landing zone."""

import json

import dagster as dg

from avdag.automation.sensors import MAX_BATCHES_PER_TICK, landing_zone_sensor
from avdag.resources.storage import LandingZoneResource


def _batch(root, name):
    videos = root / name / "videos"
    videos.mkdir(parents=True)
    (videos / "c1.camera_front_wide_120fov.mp4").write_bytes(b"placeholder: the sensor never decodes")


def _tick(root, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, resources={"landing_zone": LandingZoneResource(url=str(root))})
    return landing_zone_sensor(context)


def test_new_batch_becomes_a_partition_and_a_run(tmp_path):
    _batch(tmp_path, "batch-a")
    result = _tick(tmp_path)
    assert [r.partition_key for r in result.run_requests] == ["batch-a"]
    assert [r.run_key for r in result.run_requests] == ["batch:batch-a"]
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "clip_batches" and list(add.partition_keys) == ["batch-a"]
    assert json.loads(result.cursor) == ["batch-a"]


def test_cursor_carries_over_to_a_new_context(tmp_path):
    _batch(tmp_path, "batch-a")
    first = _tick(tmp_path)
    _batch(tmp_path, "batch-b")
    second = _tick(tmp_path, cursor=first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["batch-b"]
    third = _tick(tmp_path, cursor=second.cursor)
    assert isinstance(third, dg.SkipReason) and "2 already seen" in third.skip_message


def test_one_tick_launches_at_most_the_cap(tmp_path):
    names = [f"batch-{i:02d}" for i in range(MAX_BATCHES_PER_TICK + 2)]
    for name in names:
        _batch(tmp_path, name)
    first = _tick(tmp_path)
    assert [r.partition_key for r in first.run_requests] == names[:MAX_BATCHES_PER_TICK]
    rest = _tick(tmp_path, cursor=first.cursor)
    assert [r.partition_key for r in rest.run_requests] == names[MAX_BATCHES_PER_TICK:]


def test_empty_landing_zone_skips_with_a_reason(tmp_path):
    result = _tick(tmp_path / "not-created-yet")
    assert isinstance(result, dg.SkipReason) and "no new batch" in result.skip_message


def test_unsafe_folder_names_are_not_batches(tmp_path):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "has space").mkdir()
    _batch(tmp_path, "ok-batch")
    result = _tick(tmp_path)
    assert [r.partition_key for r in result.run_requests] == ["ok-batch"]
