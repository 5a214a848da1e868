"""Drives in, clips out: cut a whole drive recording into fixed-length clips (plain Python, PyAV).

A drive (`<batch>/drives/<name>.mp4`) is cut at every `clip_s` seconds. A cut point with a keyframe
within `keyframe_tolerance_s` moves onto that keyframe, and a clip whose both ends are keyframes
(or the drive's end) is a stream copy: no decode, no quality loss, about as fast as the disk. Any
other clip is re-encoded (libx264) from its exact frame range, so every clip starts on a keyframe
and its length is `clip_s` within the tolerance at each end. A last piece shorter than `min_tail_s`
is merged into the clip before it (`tail="merge"`, the default: no footage is lost) or dropped.

Clip ids come from the drive's content and the nominal cut times (`<drive_id>-t0010-0020`, with
`drive_id` from the drive's sha256), so a re-run, or the same drive uploaded again under another
name, names the same clips. Cut clips are stored content-addressed in the state store
(`drive_clips/<sha256>.mp4`, one atomic write each) so that steps on other machines fetch them by
URL like any uploaded clip. A per-drive record (`drive_clips/_drives/<drive sha256>.<config>.json`)
lists the clips stored so far; it is rewritten after each clip and marked complete at the end, so
a killed run resumes at the next clip and a finished drive is never cut again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from avdag.core.common.state_store import StateStore
from avdag.core.ingest.near_duplicates import clip_signature
from avdag.core.ingest.video import VideoError, VideoProbe, VideoTruncated, probe_video

DRIVE_CLIPS = "drive_clips"  # state-store prefix of the cut clips
DRIVE_RECORDS = f"{DRIVE_CLIPS}/_drives"  # per-drive progress / completion records
CUTTER_VERSION = 1  # bump when the cutting changes what bytes a config produces
TAIL_RULES = ("merge", "drop")


@dataclass(frozen=True)
class ClippingConfig:
    """How drives are cut; every field is part of the per-drive record's key (a change re-cuts)."""

    clip_s: int = 10
    min_tail_s: float = 3.0
    tail: str = "merge"  # a last piece shorter than min_tail_s: "merge" into the previous clip, or "drop"
    keyframe_tolerance_s: float = 0.5  # how far a cut may move to land on a keyframe (stream copy)
    stream_copy: bool = True  # False: re-encode every clip
    crf: int = 18
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.clip_s < 1:
            raise ValueError(f"clip_s must be at least 1 second, got {self.clip_s}")
        if self.tail not in TAIL_RULES:
            raise ValueError(f"tail must be one of {TAIL_RULES}, got {self.tail!r}")
        if not 0 <= self.min_tail_s <= self.clip_s:
            raise ValueError(f"min_tail_s must be in [0, clip_s], got {self.min_tail_s}")
        if not 0 <= self.keyframe_tolerance_s < self.clip_s / 2:
            raise ValueError(f"keyframe_tolerance_s must be in [0, clip_s/2), got {self.keyframe_tolerance_s}")

    def identity(self) -> str:
        payload = json.dumps({**asdict(self), "cutter": CUTTER_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


class DriveRejected(Exception):
    """A drive that cannot be cut into clips; `check` and `reason` go to quarantine."""

    def __init__(self, check: str, reason: str) -> None:
        self.check, self.reason = check, reason
        super().__init__(f"{check}: {reason}")


# --- planning (pure) --------------------------------------------------------------------------


def nominal_cuts(duration_s: float, config: ClippingConfig) -> list[tuple[float, float]]:
    """(start, end) seconds of each clip before keyframe snapping, with the tail rule applied."""
    pieces = []
    start = 0
    while start < duration_s - 1e-6:
        pieces.append((float(start), min(float(start + config.clip_s), duration_s)))
        start += config.clip_s
    if pieces and pieces[-1][1] - pieces[-1][0] < config.min_tail_s - 1e-6:
        tail = pieces.pop()
        if config.tail == "merge" and pieces:
            pieces[-1] = (pieces[-1][0], tail[1])
    return pieces


@dataclass(frozen=True)
class DriveIndex:
    """Every frame's pts (presentation order) and which are keyframes, from one demux pass."""

    time_base: Fraction
    pts: list[int]
    keyframes: frozenset[int]
    end_pts: int  # end of the last frame

    @property
    def start_pts(self) -> int:
        return self.pts[0]

    def seconds(self, pts: int) -> float:
        return float((pts - self.start_pts) * self.time_base)

    @property
    def duration_s(self) -> float:
        return self.seconds(self.end_pts)


def index_drive(path: str | Path) -> DriveIndex:
    """Demux (no decode) the drive's first video stream: frame timestamps and keyframe flags."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts, keys, end = [], set(), None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.add(packet.pts)
            end = max(end or packet.pts, packet.pts + max(packet.duration or 0, 1))
        if not pts:
            raise VideoError(path, "no video frames")
        return DriveIndex(stream.time_base, sorted(pts), frozenset(keys), end)


@dataclass(frozen=True)
class Segment:
    """One clip to cut: nominal times (its id), actual frame range, and how it is cut."""

    nominal_start_s: float
    nominal_end_s: float
    start_pts: int
    end_pts: int | None  # exclusive; None: to the drive's end
    copy: bool


def _snap(index: DriveIndex, at_s: float, tolerance_s: float) -> tuple[int, bool]:
    """The pts a cut at `at_s` lands on, and whether it is a keyframe (the nearest one within tolerance)."""
    near = [k for k in index.keyframes if abs(index.seconds(k) - at_s) <= tolerance_s + 1e-9]
    if near:
        return min(near, key=lambda k: (abs(index.seconds(k) - at_s), k)), True
    frame = next((p for p in index.pts if index.seconds(p) >= at_s - 1e-6), index.pts[-1])
    # The frame nearest the cut, not merely the first at or after it.
    position = index.pts.index(frame)
    if position and at_s - index.seconds(index.pts[position - 1]) < index.seconds(frame) - at_s:
        frame = index.pts[position - 1]
    return frame, frame in index.keyframes


def plan_segments(index: DriveIndex, config: ClippingConfig) -> list[Segment]:
    """The clips a drive is cut into; a clip is stream-copied when both its ends are keyframes."""
    cuts = nominal_cuts(index.duration_s, config)
    if not cuts:
        return []
    tolerance = config.keyframe_tolerance_s if config.stream_copy else 0.0
    bounds: list[tuple[int | None, bool]] = [(index.start_pts, index.start_pts in index.keyframes)]
    bounds += [_snap(index, start, tolerance) for start, _ in cuts[1:]]
    bounds.append((None, True))
    last_start = bounds[-2][0]
    if len(cuts) > 1 and index.duration_s - index.seconds(last_start) < config.min_tail_s - 1e-6:
        # Snapping to a keyframe shortened the tail below the minimum: the tail rule applies again.
        (start_s, _), (_, end_s) = cuts[-2], cuts.pop()
        if config.tail == "merge":
            cuts[-1] = (start_s, end_s)
        bounds.pop(-2 if config.tail == "merge" else -1)
        if config.tail == "drop":
            bounds[-1] = (last_start, last_start in index.keyframes)
    return [
        Segment(
            start_s, end_s, bounds[i][0], bounds[i + 1][0], config.stream_copy and bounds[i][1] and bounds[i + 1][1]
        )
        for i, (start_s, end_s) in enumerate(cuts)
    ]


def drive_id_for(sha256: str) -> str:
    return f"drive-{sha256[:16]}"


def clip_id_for(drive_id: str, nominal_start_s: float, nominal_end_s: float) -> str:
    """`<drive_id>-t0010-0020`: stable for a drive's content and the cut config, readable by a person."""
    return f"{drive_id}-t{math.floor(nominal_start_s):04d}-{round(nominal_end_s):04d}"


# --- cutting (PyAV) -----------------------------------------------------------------------------


def _open_output(path: Path) -> av.container.OutputContainer:
    return av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})


def copy_segment(src: Path, segment: Segment, out: Path) -> int:
    """Stream copy: the packets from the start keyframe up to (not including) the end keyframe."""
    frames = 0
    with av.open(str(src)) as inp, _open_output(out) as output:
        stream = inp.streams.video[0]
        target = output.add_stream_from_template(stream)
        inp.seek(segment.start_pts, stream=stream, backward=True, any_frame=False)
        started = False
        for packet in inp.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            if not started:
                started = packet.is_keyframe and packet.pts == segment.start_pts
                if not started:
                    continue
            elif segment.end_pts is not None and packet.is_keyframe and packet.pts >= segment.end_pts:
                break
            packet.pts -= segment.start_pts
            packet.dts = None if packet.dts is None else packet.dts - segment.start_pts
            packet.stream = target
            output.mux(packet)
            frames += 1
    return frames


def reencode_segment(src: Path, segment: Segment, out: Path, config: ClippingConfig) -> int:
    """Re-encode the frames with pts in [start, end) (libx264, yuv420p): starts on a keyframe by construction."""
    frames = 0
    with av.open(str(src)) as inp, _open_output(out) as output:
        stream = inp.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        target = output.add_stream("libx264", rate=rate, options={"crf": str(config.crf), "preset": config.preset})
        target.width, target.height, target.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuv420p"
        target.time_base = stream.time_base
        target.codec_context.time_base = stream.time_base
        inp.seek(segment.start_pts, stream=stream, backward=True, any_frame=False)
        for frame in inp.decode(stream):
            if frame.pts is None or frame.pts < segment.start_pts:
                continue
            if segment.end_pts is not None and frame.pts >= segment.end_pts:
                break
            picture = frame.reformat(format="yuv420p")
            picture.pts, picture.time_base = frame.pts - segment.start_pts, stream.time_base
            for packet in target.encode(picture):
                output.mux(packet)
            frames += 1
        for packet in target.encode(None):
            output.mux(packet)
    return frames


# --- clips of a drive, stored and resumable -------------------------------------------------------


@dataclass
class DriveClip:
    """One clip cut from a drive: where it is stored, where in the drive it lies, and its probe."""

    clip_id: str
    url: str
    drive_id: str
    drive_sha256: str
    drive_url: str
    drive_start_s: float
    drive_end_s: float
    mode: str  # "copy" | "reencode"
    probe: dict
    signature: str | None = None  # near_duplicates.clip_signature, made while the cut file is at hand


@dataclass
class ClippingStats:
    drives_cut: int = 0
    drives_reused: int = 0
    clips_copied: int = 0
    clips_reencoded: int = 0
    clips_reused: int = 0
    seconds_cut: float = 0.0
    wall_s: float = 0.0
    modes: dict[str, float] = field(default_factory=dict)  # mode -> seconds of video cut that way


class DriveClipper:
    """Cuts drives into clips stored in `store`; `scratch` holds the local cut files until stored."""

    def __init__(
        self, store: StateStore, scratch: str | Path, config: ClippingConfig = ClippingConfig(), sign: bool = True
    ):
        self.store, self.scratch, self.config = store, Path(scratch), config
        self.stats = ClippingStats()
        self.sign = sign  # also make each clip's perceptual signature while it is on local disk

    def record_key(self, drive_sha256: str) -> str:
        return f"{DRIVE_RECORDS}/{drive_sha256}.{self.config.identity()}.json"

    def _record(self, drive_sha256: str) -> dict:
        key = self.record_key(drive_sha256)
        try:
            record = self.store.read_json(key) if self.store.exists(key) else None
        except (OSError, ValueError):
            record = None  # unreadable: cut again, the clips are content-addressed
        return record or {"drive_sha256": drive_sha256, "config": asdict(self.config), "complete": False, "clips": []}

    def clips(
        self,
        drive: str | Path,
        drive_sha256: str,
        drive_url: str,
        bounds=None,
    ) -> list[DriveClip]:
        """The drive's clips, cut now or reused from the store; raises DriveRejected for a bad drive.

        `bounds(probe) -> str | None` says why the drive itself is out of bounds (its duration, say).
        """
        drive = Path(drive)
        record = self._record(drive_sha256)
        stored = {c["clip_id"]: c for c in record["clips"] if self.store.exists(self.store.key_of(c["url"]) or "")}
        if record["complete"] and len(stored) == len(record["clips"]):
            self.stats.drives_reused += 1
            self.stats.clips_reused += len(stored)
            return [DriveClip(**{**c, "drive_url": drive_url}) for c in record["clips"]]
        try:
            probe = probe_video(drive)
        except VideoTruncated as exc:
            raise DriveRejected("truncated", exc.reason) from exc
        except VideoError as exc:
            raise DriveRejected("drive_decodable", exc.reason) from exc
        except OSError as exc:
            raise DriveRejected("drive_decodable", str(exc)) from exc
        if probe.sha256 != drive_sha256:
            raise DriveRejected("drive_decodable", f"content changed while reading: sha256 {probe.sha256[:12]}…")
        why = bounds(probe) if bounds else None
        if why:
            raise DriveRejected("drive_bounds", why)
        try:
            index = index_drive(drive)
        except (VideoError, av.FFmpegError) as exc:
            raise DriveRejected("drive_decodable", str(exc)) from exc
        segments = plan_segments(index, self.config)
        if not segments:
            raise DriveRejected(
                "drive_bounds", f"{index.duration_s:.2f}s is shorter than the minimum clip ({self.config.min_tail_s}s)"
            )
        drive_id = drive_id_for(drive_sha256)
        started = time.perf_counter()
        clips = []
        for segment in segments:
            clip_id = clip_id_for(drive_id, segment.nominal_start_s, segment.nominal_end_s)
            if clip_id in stored:
                clips.append(DriveClip(**{**stored[clip_id], "drive_url": drive_url}))
                self.stats.clips_reused += 1
                continue
            clip = self._cut(drive, index, segment, clip_id, drive_id, drive_sha256, drive_url)
            clips.append(clip)
            record["clips"] = [asdict(c) for c in clips]
            self.store.write_json(self.record_key(drive_sha256), record)
        record.update(complete=True, clips=[asdict(c) for c in clips])
        self.store.write_json(self.record_key(drive_sha256), record)
        self.stats.drives_cut += 1
        self.stats.wall_s += time.perf_counter() - started
        return clips

    def _cut(
        self, drive: Path, index: DriveIndex, segment: Segment, clip_id: str, drive_id: str, sha: str, url: str
    ) -> DriveClip:
        end_pts = index.end_pts if segment.end_pts is None else segment.end_pts
        start_s, end_s = index.seconds(segment.start_pts), index.seconds(end_pts)
        folder = self.scratch / "drive_clips"
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{clip_id}.", suffix=".mp4", dir=folder)
        os.close(handle)
        tmp = Path(name)
        try:
            mode = "copy" if segment.copy else "reencode"
            try:
                probe = self._cut_and_probe(drive, segment, tmp, index, mode)
            except (VideoError, av.FFmpegError, ValueError) as exc:
                if mode == "reencode":
                    raise DriveRejected("drive_cut", f"cannot cut {start_s:.2f}-{end_s:.2f}s: {exc}") from exc
                mode = "reencode"  # a copy that does not decode (an open GOP, say): cut it again, re-encoded
                probe = self._cut_and_probe(drive, segment, tmp, index, mode)
            key = f"{DRIVE_CLIPS}/{probe.sha256}.mp4"
            if not self.store.exists(key):
                self.store.write_bytes(key, tmp.read_bytes())  # one atomic write (rename, or one upload)
            signature = _signature_or_none(tmp) if self.sign else None
        finally:
            tmp.unlink(missing_ok=True)
        self.stats.seconds_cut += end_s - start_s
        self.stats.modes[mode] = self.stats.modes.get(mode, 0.0) + end_s - start_s
        if mode == "copy":
            self.stats.clips_copied += 1
        else:
            self.stats.clips_reencoded += 1
        return DriveClip(
            clip_id, self.store.uri(key), drive_id, sha, url, start_s, end_s, mode, asdict(probe), signature
        )

    def _cut_and_probe(self, drive: Path, segment: Segment, out: Path, index: DriveIndex, mode: str) -> VideoProbe:
        expected = sum(
            1 for p in index.pts if p >= segment.start_pts and (segment.end_pts is None or p < segment.end_pts)
        )
        if mode == "copy":
            written = copy_segment(drive, segment, out)
        else:
            written = reencode_segment(drive, segment, out, self.config)
        if written != expected:
            raise ValueError(f"{mode} wrote {written} frames, the range holds {expected}")
        return probe_video(out)


def _signature_or_none(path: Path) -> str | None:
    try:
        return clip_signature(path)
    except VideoError:
        return None
