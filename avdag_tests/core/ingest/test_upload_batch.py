"""Tests for avdag.core.ingest.landing and avdag.core.ingest.upload_batch on a local landing folder with real files.

Every file of a batch must end as a clip row or as a quarantine record naming it; nothing is
dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avdag.core.ingest.landing import LABEL_SUFFIX, VIDEO_SUFFIX, BatchListing, LandingZone, is_safe_name
from avdag.core.ingest.upload_batch import CLIP_COLUMNS, QuarantineRecord, ingest_batch
from avdag.demo.sample_data import REAL_LABEL
from avdag_tests.support.media import unique_copy

REAL_LABEL_PATH = REAL_LABEL
BATCH = "batch-2024_01.a"
FPS, N_FRAMES, SIZE = 10, 10, 64  # 1 s of 64x64 video


def write_clip(path: Path, *, fps: int = FPS, num_frames: int = N_FRAMES, size: int = SIZE) -> Path:
    """A small H.264 MP4 whose frames change over time."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for index in range(num_frames):
            rgb = np.full((size, size, 3), (index * 23) % 256, dtype=np.uint8)
            rgb[:, : size // 2, 1] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4").read_bytes()


@pytest.fixture
def real_label() -> dict:
    return json.loads(REAL_LABEL_PATH.read_text(encoding="utf-8"))


class Batch:
    """Builds <root>/<batch>/{videos,metas} and remembers every data file written."""

    def __init__(self, root: Path, name: str, clip: bytes):
        self.dir = root / name
        (self.dir / "videos").mkdir(parents=True)
        (self.dir / "metas").mkdir()
        self.clip = clip
        self.files: list[Path] = []

    def video(self, clip_id: str, data: bytes | None = None) -> Path:
        """A video file; by default the shared clip made unique (dedup would merge byte copies)."""
        return self._write(
            self.dir / "videos" / f"{clip_id}{VIDEO_SUFFIX}", unique_copy(self.clip, clip_id) if data is None else data
        )

    def label(self, clip_id: str, label) -> Path:
        text = label if isinstance(label, str) else json.dumps(label, ensure_ascii=False)
        return self._write(self.dir / "metas" / f"{clip_id}{LABEL_SUFFIX}", text.encode("utf-8"))

    def other(self, rel: str, data: bytes = b"hello\n", tracked: bool = True) -> Path:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if tracked:
            self.files.append(path)
        return path

    def _write(self, path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        self.files.append(path)
        return path


@pytest.fixture
def landing(tmp_path) -> Path:
    root = tmp_path / "landing"
    root.mkdir()
    return root


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def mixed_batch(landing, clip_bytes, real_label) -> Batch:
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("good")
    batch.label("good", real_label)
    batch.video("unlabelled")
    hyphen = dict(real_label, lighting="Daytime (low\u2011contrast daylight)", rule_violation=True, extra_key="x")
    batch.video("hyphen")
    batch.label("hyphen", hyphen)
    batch.video("empty", b"")
    batch.video("text", b'{"this": "is a JSON file saved as mp4"}\n' * 20)
    batch.video("badjson")
    batch.label("badjson", '{"weather": "Clear skies", ')
    batch.video("badweather")
    batch.label("badweather", dict(real_label, weather="Sandstorm"))
    batch.label("orphan", real_label)
    batch.other("videos/readme.txt")
    batch.other("_READY", b"", tracked=False)
    batch.other("_SUCCESS", b"", tracked=False)
    return batch


def run_ingest(landing: Path, cache_dir: Path, batch: str = BATCH):
    zone = LandingZone(str(landing))
    listing = zone.list_batch(batch)
    clips, quarantine = ingest_batch(zone, listing, cache_dir)
    return zone, listing, clips, quarantine


def by_file(quarantine: list[QuarantineRecord]) -> dict[str, QuarantineRecord]:
    files = [record.file for record in quarantine]
    assert len(files) == len(set(files)), f"a file is quarantined twice: {files}"
    return {record.file: record for record in quarantine}


def assert_every_file_accounted_once(batch: Batch, clips: list[dict], quarantine: list[QuarantineRecord]) -> None:
    """Each data file is exactly one of: a clip's video, a clip's accepted label, a quarantine record."""
    accounted = [clip["source_url"] for clip in clips]
    accounted += [clip["label_url"] for clip in clips if clip["label_json"] is not None]
    accounted += [record.file for record in quarantine]
    expected = sorted(str(path) for path in batch.files)
    assert sorted(accounted) == expected


# --- landing zone ---------------------------------------------------------------------------------


def test_list_batches_lists_safe_folders_sorted(landing, clip_bytes):
    for name in ("b2", "a1", "batch.3"):
        Batch(landing, name, clip_bytes)
    (landing / ".staging").mkdir()  # hidden folder: not a batch
    (landing / "notes.txt").write_text("not a folder")
    zone = LandingZone(str(landing) + "/")
    assert zone.is_local
    assert zone.list_batches() == ["a1", "b2", "batch.3"]


def test_list_batches_of_missing_root_is_empty(tmp_path):
    assert LandingZone(str(tmp_path / "nothing-here")).list_batches() == []


def test_list_batch_sorts_files_into_videos_labels_and_unrecognized(mixed_batch, landing):
    listing = LandingZone(str(landing)).list_batch(BATCH)
    assert isinstance(listing, BatchListing)
    assert listing.batch == BATCH
    videos_dir, metas_dir = mixed_batch.dir / "videos", mixed_batch.dir / "metas"
    assert listing.videos == {
        cid: str(videos_dir / f"{cid}{VIDEO_SUFFIX}")
        for cid in ("good", "unlabelled", "hyphen", "empty", "text", "badjson", "badweather")
    }
    assert listing.labels == {
        cid: str(metas_dir / f"{cid}{LABEL_SUFFIX}") for cid in ("good", "hyphen", "badjson", "badweather", "orphan")
    }
    assert list(listing.unrecognized) == [str(videos_dir / "readme.txt")]
    assert VIDEO_SUFFIX in listing.unrecognized[str(videos_dir / "readme.txt")]


def test_batch_root_markers_are_ignored_but_underscore_files_deeper_are_not(landing, clip_bytes):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("c1")
    batch.other("_READY", b"", tracked=False)
    batch.other("_SUCCESS", b"", tracked=False)
    deeper = batch.other("videos/_SUCCESS", b"")
    zone, listing, clips, quarantine = run_ingest(landing, Path("/nonexistent-cache"))
    assert list(listing.unrecognized) == [str(deeper)]
    assert [(q.file, q.check) for q in quarantine] == [(str(deeper), "layout")]
    assert [clip["clip_id"] for clip in clips] == ["c1"]


def test_files_in_the_wrong_place_are_layout_problems(landing, clip_bytes, real_label):
    batch = Batch(landing, BATCH, clip_bytes)
    misplaced_video = batch.other(f"metas/x{VIDEO_SUFFIX}", clip_bytes)
    misplaced_label = batch.other(f"videos/x{LABEL_SUFFIX}", json.dumps(real_label).encode())
    plain_mp4 = batch.other("videos/y.mp4", clip_bytes)
    at_root = batch.other(f"z{VIDEO_SUFFIX}", clip_bytes)
    zone, listing, clips, quarantine = run_ingest(landing, landing.parent / "cache")
    assert clips == []
    records = by_file(quarantine)
    assert set(records) == {str(p) for p in (misplaced_video, misplaced_label, plain_mp4, at_root)}
    assert {record.check for record in quarantine} == {"layout"}
    assert all(record.batch == BATCH for record in quarantine)


@pytest.mark.parametrize("name", ["../etc", "..", "a/b", "/abs", "", ".hidden", "a..b", "a b", "a" * 129])
def test_unsafe_batch_names_raise(landing, name):
    zone = LandingZone(str(landing))
    with pytest.raises(ValueError, match="unsafe batch name"):
        zone.list_batch(name)


@pytest.mark.parametrize("name", ["batch1", "2024-01-02", "a.b_c-d", "A" * 128])
def test_safe_names(name):
    assert is_safe_name(name)


def test_name_with_trailing_newline_is_unsafe(landing):
    assert not is_safe_name("batch\n")
    with pytest.raises(ValueError):
        LandingZone(str(landing)).list_batch("batch\n")


def test_read_bytes_and_local_copy_on_local_zone(landing, clip_bytes, cache_dir):
    batch = Batch(landing, BATCH, clip_bytes)
    path = batch.video("c1")
    zone = LandingZone(str(landing))
    assert zone.read_bytes(str(path)) == path.read_bytes() == unique_copy(clip_bytes, "c1")
    assert zone.local_copy(str(path), cache_dir) == path
    assert not cache_dir.exists()  # local files are used in place, never copied


# --- ingest ---------------------------------------------------------------------------------------


def test_every_input_file_is_accounted_for_exactly_once(mixed_batch, landing, cache_dir):
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    assert_every_file_accounted_once(mixed_batch, clips, quarantine)


def test_clip_rows(mixed_batch, landing, cache_dir, clip_bytes):
    _, _, clips, _ = run_ingest(landing, cache_dir)
    assert [clip["clip_id"] for clip in clips] == sorted(["good", "unlabelled", "hyphen", "badjson", "badweather"])
    for clip in clips:
        assert tuple(clip) == CLIP_COLUMNS
        video = mixed_batch.dir / "videos" / f"{clip['clip_id']}{VIDEO_SUFFIX}"
        assert clip["batch"] == BATCH
        assert clip["source_url"] == str(video)
        assert (clip["width"], clip["height"]) == (SIZE, SIZE)
        assert clip["fps"] == pytest.approx(FPS)
        assert clip["num_frames"] == N_FRAMES
        assert clip["duration_s"] == pytest.approx(N_FRAMES / FPS, abs=0.15)
        assert clip["codec"] == "h264"
        assert clip["size_bytes"] == len(unique_copy(clip_bytes, clip["clip_id"]))
        assert clip["sha256"] == hashlib.sha256(unique_copy(clip_bytes, clip["clip_id"])).hexdigest()


def test_valid_label_is_stored_canonical(mixed_batch, landing, cache_dir, real_label):
    _, _, clips, _ = run_ingest(landing, cache_dir)
    rows = {clip["clip_id"]: clip for clip in clips}
    good = rows["good"]
    assert good["label_url"] == str(mixed_batch.dir / "metas" / f"good{LABEL_SUFFIX}")
    assert json.loads(good["label_json"]) == real_label
    hyphen = json.loads(rows["hyphen"]["label_json"])
    assert hyphen["lighting"] == "Daytime (low-contrast daylight)"
    assert hyphen["rule_violation"] == "True"
    assert "extra_key" not in hyphen
    assert list(hyphen) == list(real_label)


def test_unlabelled_clip_is_a_clip_without_quarantine(mixed_batch, landing, cache_dir):
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    row = next(clip for clip in clips if clip["clip_id"] == "unlabelled")
    assert row["label_url"] is None and row["label_json"] is None
    assert not any(Path(record.file).name.startswith("unlabelled.") for record in quarantine)


def test_undecodable_videos_are_quarantined(mixed_batch, landing, cache_dir):
    _, _, _, quarantine = run_ingest(landing, cache_dir)
    records = by_file(quarantine)
    empty = records[str(mixed_batch.dir / "videos" / f"empty{VIDEO_SUFFIX}")]
    assert empty.check == "video_decodable"
    assert "zero-byte" in empty.reason
    text = records[str(mixed_batch.dir / "videos" / f"text{VIDEO_SUFFIX}")]
    assert text.check == "video_decodable"
    assert "text" in text.reason


def test_bad_labels_are_quarantined_but_clip_kept(mixed_batch, landing, cache_dir):
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    records = by_file(quarantine)
    rows = {clip["clip_id"]: clip for clip in clips}

    badjson = records[str(mixed_batch.dir / "metas" / f"badjson{LABEL_SUFFIX}")]
    assert badjson.check == "label_json"
    assert "JSON" in badjson.reason
    assert rows["badjson"]["label_json"] is None
    assert rows["badjson"]["label_url"] == badjson.file

    badweather = records[str(mixed_batch.dir / "metas" / f"badweather{LABEL_SUFFIX}")]
    assert badweather.check == "label_schema"
    assert "weather" in badweather.reason and "Sandstorm" in badweather.reason
    assert rows["badweather"]["label_json"] is None
    assert rows["badweather"]["label_url"] == badweather.file


def test_orphan_label_and_stray_file(mixed_batch, landing, cache_dir):
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    records = by_file(quarantine)
    orphan = records[str(mixed_batch.dir / "metas" / f"orphan{LABEL_SUFFIX}")]
    assert orphan.check == "orphan_label"
    assert "orphan" in orphan.reason
    stray = records[str(mixed_batch.dir / "videos" / "readme.txt")]
    assert stray.check == "layout"
    assert "orphan" not in {clip["clip_id"] for clip in clips}


def test_quarantine_checks_are_exactly_the_expected_ones(mixed_batch, landing, cache_dir):
    _, _, _, quarantine = run_ingest(landing, cache_dir)
    checks = sorted((Path(record.file).name, record.check) for record in quarantine)
    assert checks == sorted(
        [
            (f"empty{VIDEO_SUFFIX}", "video_decodable"),
            (f"text{VIDEO_SUFFIX}", "video_decodable"),
            (f"badjson{LABEL_SUFFIX}", "label_json"),
            (f"badweather{LABEL_SUFFIX}", "label_schema"),
            (f"orphan{LABEL_SUFFIX}", "orphan_label"),
            ("readme.txt", "layout"),
        ]
    )
    assert all(record.batch == BATCH for record in quarantine)


def test_label_with_several_problems_names_each_field(landing, clip_bytes, cache_dir, real_label):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("c1")
    bad = dict(real_label, driving_difficulty=0, interactive_expanded_metaaction="Vehicle following")
    del bad["road_type"]
    batch.label("c1", bad)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    (record,) = quarantine
    assert record.check == "label_schema"
    for name in ("driving_difficulty", "interactive_expanded_metaaction", "road_type"):
        assert name in record.reason
    assert clips[0]["label_json"] is None


@pytest.mark.parametrize("content", ["[1, 2, 3]", "\ufeff\u00ff", "null"])
def test_label_that_is_not_an_object(landing, clip_bytes, cache_dir, content):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("c1")
    batch.label("c1", content)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    (record,) = quarantine
    assert record.check in ("label_json", "label_schema")
    assert clips[0]["label_json"] is None
    assert_every_file_accounted_once(batch, clips, quarantine)


def test_label_not_utf8_is_a_label_json_problem(landing, clip_bytes, cache_dir):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("c1")
    path = batch.dir / "metas" / f"c1{LABEL_SUFFIX}"
    path.write_bytes(b'{"weather": "\xff\xfe"}')
    batch.files.append(path)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    (record,) = quarantine
    assert (record.file, record.check) == (str(path), "label_json")


def test_progress_reports_each_video(mixed_batch, landing, cache_dir):
    zone = LandingZone(str(landing))
    listing = zone.list_batch(BATCH)
    calls = []
    ingest_batch(zone, listing, cache_dir, progress=lambda i, n, cid: calls.append((i, n, cid)))
    ids = sorted(listing.videos)
    assert calls == [(i, len(ids), cid) for i, cid in enumerate(ids, start=1)]


def test_empty_batch(landing, clip_bytes, cache_dir):
    Batch(landing, BATCH, clip_bytes)
    assert run_ingest(landing, cache_dir)[2:] == ([], [])


def test_reingest_is_identical(mixed_batch, landing, cache_dir):
    assert run_ingest(landing, cache_dir)[2:] == run_ingest(landing, cache_dir)[2:]


# --- gaps in the "every file accounted for" promise -----------------------------------------------


def test_label_of_undecodable_video_is_accounted_for(landing, clip_bytes, cache_dir, real_label):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("broken", b"")
    batch.label("broken", real_label)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    assert clips == []
    assert_every_file_accounted_once(batch, clips, quarantine)


def test_same_clip_id_in_two_video_subfolders_is_not_dropped(landing, clip_bytes, cache_dir):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.other(f"videos/cam_a/c1{VIDEO_SUFFIX}", clip_bytes)
    batch.other(f"videos/cam_b/c1{VIDEO_SUFFIX}", clip_bytes)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    assert_every_file_accounted_once(batch, clips, quarantine)


def test_batch_folder_contents_untouched_by_ingest(mixed_batch, landing, cache_dir):
    before = {p: p.read_bytes() for p in mixed_batch.dir.rglob("*") if p.is_file()}
    run_ingest(landing, cache_dir)
    after = {p: p.read_bytes() for p in mixed_batch.dir.rglob("*") if p.is_file()}
    assert after == before
    shutil.rmtree(mixed_batch.dir)  # nothing holds the files open


def test_manifest_verifies_sizes_and_reports_missing_files(landing, clip_bytes, cache_dir):
    batch = Batch(landing, BATCH, clip_bytes)
    ok, short = batch.video("ok"), batch.video("short")
    entries = [
        {"path": f"videos/ok{VIDEO_SUFFIX}", "size": ok.stat().st_size},
        {"path": f"videos/short{VIDEO_SUFFIX}", "size": short.stat().st_size + 10},
        {"path": f"videos/lost{VIDEO_SUFFIX}", "size": 5},
    ]
    batch.other("_MANIFEST.json", json.dumps({"files": entries}).encode(), tracked=False)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    assert [c["clip_id"] for c in clips] == ["ok"]
    found = {(Path(q.file).name, q.check): q.reason for q in quarantine}
    assert "incomplete upload" in found[(f"short{VIDEO_SUFFIX}", "manifest")]
    assert "missing" in found[(f"lost{VIDEO_SUFFIX}", "manifest")]


def test_malformed_manifest_is_quarantined_and_the_batch_goes_on(landing, clip_bytes, cache_dir):
    batch = Batch(landing, BATCH, clip_bytes)
    batch.video("c1")
    manifest = batch.other("_MANIFEST.json", b"{not json", tracked=False)
    _, _, clips, quarantine = run_ingest(landing, cache_dir)
    assert [c["clip_id"] for c in clips] == ["c1"]
    assert [(q.file, q.check) for q in quarantine] == [(str(manifest), "layout")]
    assert "malformed manifest" in quarantine[0].reason
