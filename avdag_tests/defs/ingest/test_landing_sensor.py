"""The upload sensor, evaluated with build_sensor_context over a real local landing zone."""

import json

import dagster as dg

from avdag.defs.ingest.landing_sensor import MAX_BATCHES_PER_TICK, landing_zone_sensor
from avdag.resources.storage import LandingZoneResource


def _batch(root, name, *, ready=True, content=b"video bytes: the sensor never decodes"):
    videos = root / name / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    (videos / "c1.camera_front_wide_120fov.mp4").write_bytes(content)
    if ready:
        (root / name / "_READY").write_text("")


def _tick(root, cursor=None, instance=None):
    context = dg.build_sensor_context(
        cursor=cursor,
        instance=instance or dg.DagsterInstance.ephemeral(),
        resources={"landing_zone": LandingZoneResource(url=str(root))},
    )
    return landing_zone_sensor(context)


def _launched(result):
    return [r.partition_key for r in result.run_requests]


def test_new_ready_batch_becomes_a_partition_and_a_run(tmp_path):
    _batch(tmp_path, "batch-a")
    result = _tick(tmp_path)
    assert _launched(result) == ["batch-a"]
    (request,) = result.run_requests
    assert request.run_key.startswith("batch-a:") and len(request.run_key) == len("batch-a:") + 16
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "clip_batches" and list(add.partition_keys) == ["batch-a"]
    assert set(json.loads(result.cursor)["seen"]) == {"batch-a"}


def test_batch_still_uploading_is_ignored_until_its_marker_arrives(tmp_path):
    _batch(tmp_path, "batch-a", ready=False)
    first = _tick(tmp_path)
    assert not first.run_requests and "waiting for a _READY" in first.skip_reason.skip_message
    (tmp_path / "batch-a" / "_READY").write_text("")
    second = _tick(tmp_path, cursor=first.cursor)
    assert _launched(second) == ["batch-a"]


def test_cursor_carries_over_to_a_new_context(tmp_path):
    _batch(tmp_path, "batch-a")
    first = _tick(tmp_path)
    _batch(tmp_path, "batch-b")
    second = _tick(tmp_path, cursor=first.cursor)
    assert _launched(second) == ["batch-b"]
    third = _tick(tmp_path, cursor=second.cursor)
    assert not third.run_requests and "2 batches known" in third.skip_reason.skip_message


def test_identical_reupload_does_nothing_and_changed_content_reruns(tmp_path):
    _batch(tmp_path, "batch-a")
    first = _tick(tmp_path)
    (key,) = [r.run_key for r in first.run_requests]
    # Marker re-written over untouched files: recognised as the same content (from the listing alone).
    (tmp_path / "batch-a" / "_READY").write_text("re-upload")
    same = _tick(tmp_path, cursor=first.cursor)
    assert not same.run_requests and "identical content" in same.skip_reason.skip_message
    # Changed video, marker re-written: reprocessed under a new run key, no new partition.
    _batch(tmp_path, "batch-a", content=b"different video bytes, longer than before")
    (tmp_path / "batch-a" / "_READY").write_text("re-upload 2")
    changed = _tick(tmp_path, cursor=same.cursor)
    assert _launched(changed) == ["batch-a"]
    assert changed.run_requests[0].run_key != key
    assert not changed.dynamic_partitions_requests


def test_one_tick_launches_at_most_the_cap(tmp_path):
    names = [f"batch-{i:02d}" for i in range(MAX_BATCHES_PER_TICK + 2)]
    for name in names:
        _batch(tmp_path, name)
    first = _tick(tmp_path)
    assert _launched(first) == names[:MAX_BATCHES_PER_TICK]
    rest = _tick(tmp_path, cursor=first.cursor)
    assert _launched(rest) == names[MAX_BATCHES_PER_TICK:]


def test_empty_landing_zone_skips_with_a_reason(tmp_path):
    result = _tick(tmp_path / "not-created-yet")
    assert not result.run_requests and "nothing new" in result.skip_reason.skip_message


def test_unsafe_folder_names_are_not_batches(tmp_path):
    for name in (".hidden", "has space", "..", "naïve"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "_READY").write_text("")
    _batch(tmp_path, "ok-batch")
    assert _launched(_tick(tmp_path)) == ["ok-batch"]


def test_content_another_launcher_processed_is_not_launched_again(tmp_path):
    """`avdag demo` tags its batch run with the content fingerprint; a sensor switched on later skips it."""
    from avdag.defs.ingest.landing_sensor import FINGERPRINT_TAG
    from avdag.resources.storage import LandingZoneResource

    _batch(tmp_path, "batch-demo")
    _batch(tmp_path, "batch-new", content=b"other bytes")
    fingerprint = LandingZoneResource(url=str(tmp_path)).zone().batch_fingerprint("batch-demo")

    @dg.op
    def noop():
        pass

    @dg.job
    def demo_run():
        noop()

    with dg.instance_for_test() as instance:
        demo_run.execute_in_process(
            instance=instance, tags={"dagster/partition": "batch-demo", FINGERPRINT_TAG: fingerprint}
        )
        result = _tick(tmp_path, instance=instance)
        assert _launched(result) == ["batch-new"]
        assert set(json.loads(result.cursor)["seen"]) == {"batch-demo", "batch-new"}  # both recorded as seen
        _batch(tmp_path, "batch-demo", content=b"re-uploaded, changed")  # changed content runs again
        (tmp_path / "batch-demo" / "_READY").write_text("again")
        again = _tick(tmp_path, cursor=result.cursor, instance=instance)
        assert _launched(again) == ["batch-demo"]
