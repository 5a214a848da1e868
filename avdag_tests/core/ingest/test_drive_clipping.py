"""Cutting drives into clips: cut points, the tail rule, stable ids, stream copy vs re-encode, resuming.

Real H.264 drives made with PyAV (small: 128x72 at 10 fps), cut with PyAV, checked by decoding.
"""

from __future__ import annotations

import av
import pytest

from avdag.core.common.state_store import StateStore, file_sha256
from avdag.core.ingest.drive_clipping import (
    ClippingConfig,
    DriveClipper,
    DriveRejected,
    clip_id_for,
    drive_id_for,
    index_drive,
    nominal_cuts,
    plan_segments,
)
from avdag.core.ingest.video import probe_video
from avdag_tests.support.media import cut_tail, encode_drive


@pytest.fixture(scope="module")
def drive_2s_gop(tmp_path_factory):
    """25 s at 10 fps, a keyframe every 2 s: cuts at 10 s and 20 s land on keyframes."""
    return encode_drive(tmp_path_factory.mktemp("drive") / "gop2.mp4", seconds=25, gop=20)


@pytest.fixture(scope="module")
def drive_odd_gop(tmp_path_factory):
    """25 s at 10 fps, a keyframe every 1.5 s: the nearest keyframes to 10 s / 20 s are 0.5 s off."""
    return encode_drive(tmp_path_factory.mktemp("drive") / "gop15.mp4", seconds=25, gop=15, seed=1)


def clipper(tmp_path, **config) -> DriveClipper:
    store = StateStore(str(tmp_path / "state"))
    return DriveClipper(store, tmp_path / "scratch", ClippingConfig(**config), sign=False)  # signatures: elsewhere


def decoded_frames(path) -> tuple[int, bool]:
    """(frames that decode, whether the first packet is a keyframe)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = next(p for p in container.demux(stream) if p.size)
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0)), first.is_keyframe


# --- planning -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "tail", "expected"),
    [
        (30.0, "merge", [(0, 10), (10, 20), (20, 30)]),
        (25.0, "merge", [(0, 10), (10, 20), (20, 25)]),  # a 5 s tail is long enough to be a clip
        (22.0, "merge", [(0, 10), (10, 22)]),  # a 2 s tail joins the clip before it
        (22.0, "drop", [(0, 10), (10, 20)]),  # ... or is dropped
        (5.0, "merge", [(0, 5)]),  # a short drive is one clip
        (2.0, "merge", []),  # shorter than the minimum tail: nothing to cut
    ],
)
def test_nominal_cuts_and_the_tail_rule(duration, tail, expected):
    assert nominal_cuts(duration, ClippingConfig(clip_s=10, min_tail_s=3.0, tail=tail)) == expected


def test_bad_configs_are_refused():
    for bad in ({"clip_s": 0}, {"tail": "keep"}, {"min_tail_s": 11}, {"keyframe_tolerance_s": 5}):
        with pytest.raises(ValueError):
            ClippingConfig(**bad)
    assert ClippingConfig().identity() != ClippingConfig(clip_s=5).identity()


def test_clip_ids_come_from_the_drive_content_and_the_nominal_times():
    drive_id = drive_id_for("ab" * 32)
    assert drive_id == "drive-abababababababab"
    assert clip_id_for(drive_id, 10.0, 20.0) == "drive-abababababababab-t0010-0020"
    assert clip_id_for(drive_id, 40.0, 53.04) == "drive-abababababababab-t0040-0053"


def test_cuts_snap_to_near_keyframes_and_copy_only_between_keyframes(drive_2s_gop, drive_odd_gop):
    index = index_drive(drive_2s_gop)
    assert index.duration_s == pytest.approx(25.0)
    segments = plan_segments(index, ClippingConfig())
    assert [(s.nominal_start_s, s.nominal_end_s, s.copy) for s in segments] == [
        (0, 10, True),
        (10, 20, True),
        (20, 25, True),
    ]
    odd = index_drive(drive_odd_gop)
    # Within 0.5 s: the cuts move to the keyframes at 10.5 s and 19.5 s and every clip is a copy.
    snapped = plan_segments(odd, ClippingConfig(keyframe_tolerance_s=0.5))
    assert [odd.seconds(s.start_pts) for s in snapped] == [0.0, 10.5, 19.5] and all(s.copy for s in snapped)
    # Tighter tolerance: the cuts stay at 10 s and 20 s, on non-keyframes, so all three are re-encoded.
    exact = plan_segments(odd, ClippingConfig(keyframe_tolerance_s=0.2))
    assert [odd.seconds(s.start_pts) for s in exact] == [0.0, 10.0, 20.0]
    assert [s.copy for s in exact] == [False, False, False]
    assert not any(s.copy for s in plan_segments(index, ClippingConfig(stream_copy=False)))


def test_snapping_that_shortens_the_tail_applies_the_tail_rule_again(drive_odd_gop):
    odd = index_drive(drive_odd_gop)  # 25 s, keyframes every 1.5 s
    # 11 s clips: nominal 0-11, 11-22, 22-25 (a 3 s tail, just long enough); the cut at 22 s snaps to the
    # keyframe at 22.5 s, leaving a 2.5 s tail, which the tail rule then merges (or drops).
    config = ClippingConfig(clip_s=11, min_tail_s=3.0, keyframe_tolerance_s=0.5)
    merged = plan_segments(odd, config)
    assert [(s.nominal_start_s, s.nominal_end_s, s.end_pts, s.copy) for s in merged] == [
        (0, 11, merged[1].start_pts, True),
        (11, 25, None, True),
    ]
    assert odd.seconds(merged[1].start_pts) == 10.5
    dropped = plan_segments(odd, ClippingConfig(clip_s=11, min_tail_s=3.0, keyframe_tolerance_s=0.5, tail="drop"))
    assert [(s.nominal_start_s, s.nominal_end_s) for s in dropped] == [(0, 11), (11, 22)]
    assert odd.seconds(dropped[1].end_pts) == 22.5 and dropped[1].copy


# --- cutting ------------------------------------------------------------------------------------


def test_stream_copy_cuts_whole_gops_that_decode(drive_2s_gop, tmp_path):
    cut = clipper(tmp_path)
    sha = file_sha256(drive_2s_gop)
    clips = cut.clips(drive_2s_gop, sha, "landing/drives/gop2.mp4")
    drive_id = drive_id_for(sha)
    assert [c.clip_id for c in clips] == [f"{drive_id}-t0000-0010", f"{drive_id}-t0010-0020", f"{drive_id}-t0020-0025"]
    assert [(c.drive_start_s, c.drive_end_s, c.mode) for c in clips] == [
        (0.0, 10.0, "copy"),
        (10.0, 20.0, "copy"),
        (20.0, 25.0, "copy"),
    ]
    store = StateStore(str(tmp_path / "state"))
    for clip, frames in zip(clips, (100, 100, 50)):
        assert clip.url == store.uri(f"drive_clips/{clip.probe['sha256']}.mp4")  # content-addressed in the store
        assert file_sha256(clip.url) == clip.probe["sha256"]
        assert decoded_frames(clip.url) == (frames, True)
        assert probe_video(clip.url).duration_s == pytest.approx(frames / 10, abs=0.01)
        assert clip.drive_sha256 == sha and clip.drive_url == "landing/drives/gop2.mp4"
    assert cut.stats.clips_copied == 3 and cut.stats.clips_reencoded == 0
    assert not list((tmp_path / "scratch").rglob("*.mp4")), "cut files are removed from scratch once stored"


def test_reencode_cuts_exact_frame_ranges_starting_on_a_keyframe(drive_odd_gop, tmp_path):
    cut = clipper(tmp_path, keyframe_tolerance_s=0.2)
    clips = cut.clips(drive_odd_gop, file_sha256(drive_odd_gop), "d.mp4")
    assert [(c.drive_start_s, c.drive_end_s, c.mode) for c in clips] == [
        (0.0, 10.0, "reencode"),
        (10.0, 20.0, "reencode"),
        (20.0, 25.0, "reencode"),
    ]
    for clip, frames in zip(clips, (100, 100, 50)):
        assert decoded_frames(clip.url) == (frames, True)
        assert clip.probe["duration_s"] == pytest.approx(frames / 10, abs=0.01)
        assert (clip.probe["width"], clip.probe["height"], clip.probe["codec"]) == (128, 72, "h264")
    assert cut.stats.clips_reencoded == 3 and cut.stats.modes == {"reencode": pytest.approx(25.0)}


def test_a_second_run_cuts_nothing_and_a_killed_run_resumes_at_the_next_clip(drive_2s_gop, tmp_path):
    sha = file_sha256(drive_2s_gop)
    first = clipper(tmp_path).clips(drive_2s_gop, sha, "a.mp4")
    again = clipper(tmp_path)
    assert again.clips(drive_2s_gop, sha, "b.mp4") == [
        type(c)(**{**vars(c), "drive_url": "b.mp4"}) for c in first
    ]  # the drive's URL is this upload's; everything else is the stored record
    assert (again.stats.drives_reused, again.stats.clips_copied, again.stats.clips_reencoded) == (1, 0, 0)

    # A run killed after its first clip: the record lists one clip and is not complete.
    store = StateStore(str(tmp_path / "state"))
    key = again.record_key(sha)
    record = store.read_json(key)
    store.write_json(key, {**record, "complete": False, "clips": record["clips"][:1]})
    resumed = clipper(tmp_path)
    assert resumed.clips(drive_2s_gop, sha, "a.mp4") == first
    assert (resumed.stats.clips_reused, resumed.stats.clips_copied) == (1, 2)
    assert store.read_json(key)["complete"] is True

    # Another cut config is another record: cut anew, nothing reused.
    other = clipper(tmp_path, clip_s=5)
    assert len(other.clips(drive_2s_gop, sha, "a.mp4")) == 5 and other.stats.clips_reused == 0


def test_bad_drives_are_rejected_with_the_reason(drive_2s_gop, tmp_path):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(cut_tail(drive_2s_gop, 0.3))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 100)
    cut = clipper(tmp_path)
    for path, check, words in (
        (truncated, "truncated", "truncated: the stream ends at"),
        (garbage, "drive_decodable", "cannot decode"),
    ):
        with pytest.raises(DriveRejected) as caught:
            cut.clips(path, file_sha256(path), str(path))
        assert caught.value.check == check and words in caught.value.reason
    with pytest.raises(DriveRejected) as caught:
        cut.clips(drive_2s_gop, file_sha256(drive_2s_gop), "x", bounds=lambda probe: "duration 25.00s too long")
    assert (caught.value.check, caught.value.reason) == ("drive_bounds", "duration 25.00s too long")
    assert not StateStore(str(tmp_path / "state")).exists("drive_clips")
