"""`LandingZone.upload_batch`: a local batch folder lands whole, marker last, on a folder or on S3."""

import pytest

from avdag.core.ingest.landing import LABEL_SUFFIX, READY_MARKER, VIDEO_SUFFIX, LandingZone


def _local_batch(root, n=2):
    batch = root / "made-here"
    for i in range(n):
        (batch / "videos").mkdir(parents=True, exist_ok=True)
        (batch / "metas").mkdir(parents=True, exist_ok=True)
        (batch / "videos" / f"clip{i}{VIDEO_SUFFIX}").write_bytes(bytes([i]) * (1000 + i))
        (batch / "metas" / f"clip{i}{LABEL_SUFFIX}").write_text(f'{{"i": {i}}}')
    (batch / READY_MARKER).touch()
    return batch


def _check_landed(zone: LandingZone):
    assert zone.list_batches() == ["batch-7"]
    listing = zone.list_batch("batch-7")
    assert sorted(url.rsplit("/", 1)[-1] for url in listing.videos.values()) == [
        f"clip0{VIDEO_SUFFIX}",
        f"clip1{VIDEO_SUFFIX}",
    ]
    assert zone.marker_signature("batch-7") is not None


def test_upload_to_a_local_zone(tmp_path):
    zone = LandingZone(str(tmp_path / "landing"))
    assert zone.upload_batch(_local_batch(tmp_path), "batch-7") == 4
    _check_landed(zone)
    assert (tmp_path / "landing" / "batch-7" / "videos" / f"clip1{VIDEO_SUFFIX}").stat().st_size == 1001


def test_upload_to_s3_writes_the_marker_last(tmp_path, s3):
    s3.make_bucket("upload-bucket")
    zone = LandingZone("s3://upload-bucket/landing", s3.storage_options())
    written, pipe_file = [], zone.fs.pipe_file
    zone.fs.pipe_file = lambda key, data, **kw: (written.append(key), pipe_file(key, data, **kw))[1]
    zone.upload_batch(_local_batch(tmp_path), "batch-7")
    assert len(written) == 5 and written[-1] == f"upload-bucket/landing/batch-7/{READY_MARKER}"
    _check_landed(zone)


def test_an_unsafe_batch_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unsafe batch name"):
        LandingZone(str(tmp_path / "landing")).upload_batch(_local_batch(tmp_path), "../escape")
