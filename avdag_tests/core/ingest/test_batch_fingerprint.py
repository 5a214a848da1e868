"""A local batch's fingerprint (what a sensor tick computes) comes from the listing, never the bytes.

Opens are seen through a Python audit hook ("open" events: builtins.open, io.open, os.open), so
the check holds whatever way the code might read a file, and runs the same as root, where a
chmod 000 file would still be readable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avdag.core.ingest.landing import LABEL_SUFFIX, MANIFEST_MARKER, READY_MARKER, VIDEO_SUFFIX, LandingZone
from avdag.core.ingest.upload_watch import plan_tick

_RECORDERS: list[list[str]] = []
_HOOKED = False


def _on_audit(event: str, args: tuple) -> None:
    if event == "open" and _RECORDERS and isinstance(args[0], (str, bytes, os.PathLike)):
        for recorder in _RECORDERS:
            recorder.append(os.fsdecode(args[0]))


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """Every path opened in this process while the block runs (audit hooks cannot be removed, so
    one process-wide hook is installed once and records only inside such a block)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_on_audit)
        _HOOKED = True
    recorder: list[str] = []
    _RECORDERS.append(recorder)
    try:
        yield recorder
    finally:
        _RECORDERS.remove(recorder)


def _batch(root: Path, name: str = "batch-a", *, sizes: tuple[int, ...] = (1000, 2000)) -> Path:
    batch = root / name
    (batch / "videos").mkdir(parents=True)
    (batch / "metas").mkdir()
    for i, size in enumerate(sizes):
        (batch / "videos" / f"c{i}{VIDEO_SUFFIX}").write_bytes(bytes([i + 1]) * size)
        (batch / "metas" / f"c{i}{LABEL_SUFFIX}").write_text(json.dumps({"i": i}))
    (batch / READY_MARKER).write_bytes(b"")
    return batch


def test_a_tick_reads_no_file_of_a_local_batch(tmp_path):
    batch = _batch(tmp_path)
    huge = batch / "videos" / f"huge{VIDEO_SUFFIX}"
    with open(huge, "wb") as handle:
        os.truncate(handle.fileno(), 20 * 1024**3)  # sparse: 20 GiB listed, no disk used
    zone = LandingZone(str(tmp_path))
    with opened_files() as opened:
        plan = plan_tick(zone, None)
        fingerprint = zone.batch_fingerprint("batch-a")
    assert plan.launch == [("batch-a", fingerprint)]
    read = [path for path in opened if Path(path).is_file() and Path(path).is_relative_to(tmp_path)]
    assert read == [], f"the tick opened files of the landing zone: {read}"


def test_the_audit_hook_sees_a_read(tmp_path):
    """The probe above can fail: reading a batch file through the zone is recorded."""
    batch = _batch(tmp_path)
    zone = LandingZone(str(tmp_path))
    with opened_files() as opened:
        zone.read_bytes(str(batch / "metas" / f"c0{LABEL_SUFFIX}"))
    assert str(batch / "metas" / f"c0{LABEL_SUFFIX}") in opened


def test_a_changed_file_changes_the_fingerprint(tmp_path):
    batch = _batch(tmp_path)
    zone = LandingZone(str(tmp_path))
    video = batch / "videos" / f"c0{VIDEO_SUFFIX}"
    before = zone.batch_fingerprint("batch-a")
    assert LandingZone(str(tmp_path)).batch_fingerprint("batch-a") == before  # stable across zone objects
    (batch / READY_MARKER).write_bytes(b"re-upload")  # only the marker: same content
    assert zone.batch_fingerprint("batch-a") == before

    stat = video.stat()
    video.write_bytes(b"\xff" * stat.st_size)  # same size, new bytes
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    same_size = zone.batch_fingerprint("batch-a")
    assert same_size != before

    with open(video, "ab") as handle:  # grown
        handle.write(b"more")
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # even with the mtime put back
    assert zone.batch_fingerprint("batch-a") not in (before, same_size)

    replaced = batch / "videos" / "tmp.part"
    replaced.write_bytes(video.read_bytes())
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    grown = zone.batch_fingerprint("batch-a")
    os.replace(replaced, video)  # same size and mtime, another file (a rename, as rsync -t does)
    assert zone.batch_fingerprint("batch-a") != grown


def test_a_manifest_is_the_fingerprint_when_there_is_one(tmp_path):
    batch = _batch(tmp_path)
    (batch / READY_MARKER).unlink()
    files = [
        {"path": p.relative_to(batch).as_posix(), "size": p.stat().st_size}
        for p in sorted(batch.rglob("*"))
        if p.is_file()
    ]
    (batch / MANIFEST_MARKER).write_text(json.dumps({"files": files}))
    zone = LandingZone(str(tmp_path))
    with opened_files() as opened:
        fingerprint = zone.batch_fingerprint("batch-a")
    assert [Path(p).name for p in opened if Path(p).is_relative_to(tmp_path)] == [MANIFEST_MARKER]
    os.utime(batch / "videos" / f"c0{VIDEO_SUFFIX}", ns=(0, 0))  # the manifest, not the listing, decides
    assert zone.batch_fingerprint("batch-a") == fingerprint
