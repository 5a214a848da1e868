"""Video probing and recipe-exact frame sampling, decoded with PyAV.

The captioning recipe feeds Qwen-VL models (Cosmos-Reason1-7B is a Qwen2.5-VL, Cosmos-Reason2 a
Qwen3-VL) frames chosen by ``qwen_vl_utils.fetch_video`` (qwen-vl-utils 0.0.14), called with
``image_patch_size`` 14 for Qwen2.5-VL and 16 for Qwen3-VL. A model fine-tuned on those frames should
be prompted with the very same frames, so ``sample_frames`` re-implements that recipe step by step:

1. ``smart_nframes``: ``duration * fps`` frames, clamped to ``[min_frames, max_frames]`` and the
   stream length, floored to a multiple of ``frame_factor`` (``FRAME_FACTOR``, 2).
2. indices ``torch.linspace(0, total_frames - 1, nframes).round()``.
3. ``smart_resize`` to multiples of ``factor`` (patch x merge: ``IMAGE_FACTOR`` 28 for Qwen2.5-VL, 32
   for Qwen3-VL) inside ``[min_pixels, max_pixels]``, where ``min_pixels`` defaults to 128 merged
   tokens and ``max_pixels`` is further capped by the per-frame (768 tokens) and total-pixel budgets,
   as qwen-vl-utils does.
4. torchvision bicubic antialiased resize of the uint8 frames, then ``float()``.

Unlike the recipe's readers it decodes sequentially and keeps only the wanted frames (converted to
RGB and resized as soon as they are decoded), so memory is bounded by the sampled frames, not by the
clip length.

Differences from qwen-vl-utils' torchcodec reader (the one it picks when torchcodec is installed):

* Total frames: torchcodec (seek_mode="exact") scans every packet and uses that count; we use the
  container's ``stream.frames`` (for MP4, the sample-table count, which is the same number for every
  well-formed file) and only count demuxed packets when the header lacks it. Its torchvision fallback
  instead counts *decoded* frames.
* Frame rate: torchcodec's exact mode computes ``frames / (last_pts_end - first_pts)``; we use the
  stream's average rate (FFmpeg's ``avg_frame_rate``). Identical for constant-frame-rate clips such
  as dashcam recordings; they can differ slightly for variable-frame-rate files.
* If the header over-states the frame count (e.g. a recording cut off mid-write), torchcodec fails and
  qwen-vl-utils falls back to torchvision (which counts decoded frames); we re-plan once with the
  decoded count, which gives the same frame choice as that fallback.
* Rotation side data is ignored by both.

Decoded RGB pixels are bit-identical to torchcodec's on the sample clip (both use FFmpeg's swscale).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av

from avdag.core.common.state_store import file_sha256

if TYPE_CHECKING:  # torch and torchvision load on first decode, not on import: probing and
    import torch  # light Dagster steps (ingest, reports) never pay their import time

__all__ = [
    "FRAME_FACTOR",
    "IMAGE_FACTOR",
    "RECIPE_FPS",
    "RECIPE_MAX_PIXELS",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "VIDEO_TOTAL_PIXELS",
    "SampledVideo",
    "TRUNCATION_TOLERANCE_S",
    "VideoError",
    "VideoProbe",
    "VideoTruncated",
    "file_sha256",
    "frame_indices",
    "probe_video",
    "sample_frames",
    "smart_nframes",
    "smart_resize",
]

# --- Recipe constants (qwen-vl-utils 0.0.14, Qwen2.5-VL patch 14 x spatial merge 2) ---------------
IMAGE_FACTOR = 28
FRAME_FACTOR = 2
RECIPE_FPS = 2.0
# Exactly what the conversations record. Not interchangeable with RECIPE_MAX_PIXELS + 1 (a guard some
# scripts add against float error): where the budget fits a frame exactly, the float beta of
# smart_resize lands just below or above the factor, e.g. 214x856 -> 140x644 here but 168x672 with + 1.
# Sampling with the recorded value is what qwen-vl-utils does when it reads the conversation.
RECIPE_MAX_PIXELS = 16 * 9 * IMAGE_FACTOR * IMAGE_FACTOR
# qwen-vl-utils' per-frame bounds in merged tokens; in pixels they scale with the model's factor.
VIDEO_MIN_TOKENS = 128
VIDEO_MAX_TOKENS = 768
# qwen-vl-utils' default total budget: MODEL_SEQ_LEN (128000 unless its env var says otherwise) tokens.
MODEL_SEQ_LEN = 128000
VIDEO_MIN_PIXELS = VIDEO_MIN_TOKENS * IMAGE_FACTOR * IMAGE_FACTOR
VIDEO_MAX_PIXELS = VIDEO_MAX_TOKENS * IMAGE_FACTOR * IMAGE_FACTOR
VIDEO_TOTAL_PIXELS = MODEL_SEQ_LEN * IMAGE_FACTOR * IMAGE_FACTOR * 0.9
MAX_ASPECT_RATIO = 200
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768

# A clip whose data ends more than this before the duration its container declares is truncated (an
# upload cut short whose mp4 index survived). Half a second absorbs declared-duration rounding (edit
# lists, the last frame's duration) while a clip can lose at most that much of what its label describes.
TRUNCATION_TOLERANCE_S = 0.5


class VideoError(Exception):
    """A file that cannot serve as a video input, with a human-readable reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class VideoTruncated(VideoError):
    """The container declares a longer stream than the file holds: its label would describe missing footage."""

    def __init__(self, path: str | os.PathLike[str], declared_s: float, decodable_s: float, detail: str) -> None:
        self.declared_s = declared_s
        self.decodable_s = decodable_s
        super().__init__(
            path,
            f"truncated: the stream ends at {decodable_s:.2f}s but the container declares {declared_s:.2f}s ({detail})",
        )


@dataclass(frozen=True)
class VideoProbe:
    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    num_frames: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class SampledVideo:
    frames: torch.Tensor  # float32, T x 3 x H x W, values 0..255
    sample_fps: float  # fps the sampled frames represent, as qwen-vl-utils' video_kwargs["fps"]
    frame_indices: list[int]  # source frame indices taken, in order
    video_fps: float = 0.0  # the source's frame rate; with frame_indices, Qwen3-VL's frame timestamps
    total_frames: int = 0  # source frames the plan was made over

    def metadata(self) -> dict:
        """qwen-vl-utils' ``video_metadata`` for these frames (what Qwen3-VL's processor timestamps from)."""
        return {
            "fps": self.video_fps,
            "frames_indices": list(self.frame_indices),
            "total_num_frames": self.total_frames,
        }


# --- Recipe arithmetic (pure functions, mirrored from qwen-vl-utils) ------------------------------


def _round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_nframes(
    total_frames: int,
    video_fps: float,
    *,
    fps: float = RECIPE_FPS,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    frame_factor: int = FRAME_FACTOR,
) -> int:
    """How many frames the recipe feeds the model: ``fps`` per second, clamped, a multiple of ``frame_factor``."""
    min_frames = _ceil_by_factor(min_frames, frame_factor)
    max_frames = _floor_by_factor(min(max_frames, total_frames), frame_factor)
    wanted = total_frames / video_fps * fps
    nframes = _floor_by_factor(min(max(wanted, min_frames), max_frames, total_frames), frame_factor)
    if not frame_factor <= nframes <= total_frames:
        raise ValueError(f"nframes should be in [{frame_factor}, {total_frames}], got {nframes}")
    return nframes


def frame_indices(total_frames: int, nframes: int) -> list[int]:
    """Evenly spaced source indices; float32 linspace + round-half-even, exactly as the recipe."""
    import torch

    return torch.linspace(0, total_frames - 1, nframes).round().long().tolist()


def smart_resize(
    height: int, width: int, *, min_pixels: int, max_pixels: float, factor: int = IMAGE_FACTOR
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within bounds, aspect ratio kept."""
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio must be below {MAX_ASPECT_RATIO}, got {width}x{height}")
    h_bar = max(factor, _round_by_factor(height, factor))
    w_bar = max(factor, _round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = _floor_by_factor(height / beta, factor)
        w_bar = _floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by_factor(height * beta, factor)
        w_bar = _ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def _effective_max_pixels(
    max_pixels: float, min_pixels: int, nframes: int, factor: int = IMAGE_FACTOR, frame_factor: int = FRAME_FACTOR
) -> float:
    """The element's max_pixels, capped by the per-frame and whole-video budgets of fetch_video (in merged
    tokens, so in pixels they scale with the model's factor)."""
    per_frame = VIDEO_MAX_TOKENS * factor * factor
    total = MODEL_SEQ_LEN * factor * factor * 0.9  # the same float expression as fetch_video's
    budget = max(min(per_frame, total / nframes * frame_factor), int(min_pixels * 1.05))
    return min(max_pixels, budget)


# --- Opening and metadata -------------------------------------------------------------------------


def _check_file(path: Path) -> int:
    """Size in bytes, after rejecting what FFmpeg would give cryptic errors for."""
    if not path.exists():
        raise VideoError(path, "file not found")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(path, "zero-byte file")
    return size


@contextmanager
def _open_video_stream(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open the container and its first video stream, turning FFmpeg errors into VideoError."""
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as error:
        raise _decode_failure(path, error) from error
    try:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def _ffmpeg_message(error: av.FFmpegError) -> str:
    return getattr(error, "strerror", None) or str(error)


_FIRST_BOX_TYPES = frozenset({"ftyp", "styp", "moov", "mdat", "wide", "free", "skip"})
_BOX_TYPE = re.compile(r"[A-Za-z0-9 \xa9]{4}")


def _truncated_box(path: Path) -> str | None:
    """Describe the first top-level MP4/MOV box that runs past end of file, if any.

    FFmpeg only says "Invalid data" for a cut-off recording; the box walk names the real problem.
    """
    file_size = path.stat().st_size
    offset = 0
    with open(path, "rb") as handle:
        while offset + 8 <= file_size:
            handle.seek(offset)
            header = handle.read(16)
            box_size = int.from_bytes(header[:4], "big")
            box_type = header[4:8].decode("latin-1")
            if not _BOX_TYPE.fullmatch(box_type) or (offset == 0 and box_type not in _FIRST_BOX_TYPES):
                return None  # not an ISO-BMFF file
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            if box_size == 0 or box_size < 8:
                return None  # 0 means "to end of file"; < 8 is malformed, not truncated
            if offset + box_size > file_size:
                return f"'{box_type}' box needs {box_size} bytes at offset {offset}, file has {file_size}"
            offset += box_size
    return None


def _looks_like_text(path: Path) -> bool:
    """Whether the file starts with UTF-8 text (a JSON/CSV/log saved with a video extension)."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the 4 KiB boundary is fine
        return error.start >= len(head) - 3
    return True


def _decode_failure(path: Path, error: av.FFmpegError, what: str = "cannot decode") -> VideoError:
    """VideoError for an FFmpeg failure, saying "truncated" when the container is cut short."""
    message = _ffmpeg_message(error)
    truncation = _truncated_box(path)
    if truncation:
        return VideoError(path, f"truncated: {truncation} ({what}: {message})")
    if _looks_like_text(path):
        return VideoError(path, f"not a video, looks like a text file ({what}: {message})")
    return VideoError(path, f"{what}: {message}")


def _stream_fps(path: Path, stream: av.VideoStream) -> float:
    """Average frame rate from the stream header (FFmpeg's avg_frame_rate, else its guess)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoError(path, "unknown frame rate")
    return float(rate)


def _stream_duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _count_packets(path: Path) -> int:
    """Frame count by demuxing (no decoding), for containers whose header lacks it."""
    with _open_video_stream(path) as (container, stream):
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _total_frames(path: Path, stream: av.VideoStream) -> int:
    return stream.frames if stream.frames > 0 else _count_packets(path)


# --- Probing --------------------------------------------------------------------------------------


def _decode_first_frame(path: Path, container: av.container.InputContainer, stream: av.VideoStream) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as error:
        raise _decode_failure(path, error) from error
    raise VideoError(path, "truncated: decoded 0 frames")


def _packet_span(packet: av.Packet) -> tuple[int, int] | None:
    """(start, end) of a packet in its stream's time base, or None when it carries no timestamp."""
    start = packet.pts if packet.pts is not None else packet.dts
    if start is None:
        return None
    return start, start + max(packet.duration or 0, 1)


def _decode_tail(stream: av.VideoStream, packets: list[av.Packet]) -> int | None:
    """End (time base) of the frames decoded from the last group of pictures; None if none decode."""
    spans = {span[0]: span[1] for span in map(_packet_span, packets) if span}
    end = None
    try:
        for packet in [*packets, None]:
            for frame in stream.codec_context.decode(packet):
                if frame.pts is not None:
                    end = max(end or frame.pts, spans.get(frame.pts, frame.pts + 1))
    except av.FFmpegError:
        pass  # garbage where frames should be: what decoded before it is what the clip holds
    return end


@dataclass(frozen=True)
class _Presence:
    seconds: float  # of video whose data is in the file and decodes
    detail: str  # how that was found, for the quarantine reason
    data_missing: bool  # a packet's bytes run past end of file (or demuxing stopped): the file was cut


def _present_duration_s(path: Path, file_size: int) -> _Presence:
    """Seconds of video whose data is in the file and decodes, and how that was found.

    Demuxes the whole packet index (no decoding): the first packet whose bytes run past end of file,
    or that the demuxer flags as cut, ends the stream. Only the last group of pictures (keyframe
    onward) is decoded, so data that is present but not video (a preallocated file never filled)
    counts as missing too, at the cost of one GOP, not the clip.
    """
    with _open_video_stream(path) as (container, stream):
        start = stream.start_time
        end = None
        complete = 0  # packets whose data is present and that carry a timestamp
        demuxed = 0  # packets whose data is present
        cut = False
        tail: list[av.Packet] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                span = _packet_span(packet)
                if packet.is_corrupt or (
                    packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size > file_size
                ):
                    cut = True
                    break
                demuxed += 1
                if span is None:
                    continue
                complete += 1
                start = span[0] if start is None else min(start, span[0])
                end = span[1] if end is None else max(end, span[1])
                tail = [packet] if packet.is_keyframe else [*tail, packet]
        except av.FFmpegError as error:
            cut = True
            reason = f"demuxing stopped: {_ffmpeg_message(error)}"
        else:
            reason = "a packet runs past end of file" if cut else "every packet's data is present"
        if not cut and demuxed < stream.frames:  # FFmpeg can stop quietly where the data ends
            cut = True
            reason = f"demuxing ended after {demuxed} packets"
        decoded_end = _decode_tail(stream, tail) if tail else None
        if tail and (decoded_end is None or decoded_end < end):
            first = _packet_span(tail[0])
            end = decoded_end if decoded_end is not None else (first[0] if first else start)
            reason = "the last frames do not decode"
        declared = f" of {stream.frames}" if stream.frames > 0 else ""
        detail = f"{complete}{declared} frames' data present, {file_size} bytes in the file; {reason}"
        if end is None or start is None or stream.time_base is None:
            return _Presence(0.0, detail, cut)
        return _Presence(float((end - start) * stream.time_base), detail, cut)


def _cut_before_first_frame(
    path: Path, size_bytes: int, container: av.container.InputContainer, stream: av.VideoStream, error: VideoError
) -> VideoTruncated | None:
    """VideoTruncated when an upload was cut before its first frame's data: the index declares footage
    whose bytes never arrived. None when the bytes are all there but do not decode (corrupt, not
    cut), or there is no index to compare against: the decode failure then says it best."""
    try:
        declared_s = _stream_duration_s(container, stream)
        if declared_s is None and stream.frames > 0:
            declared_s = stream.frames / _stream_fps(path, stream)
        present = _present_duration_s(path, size_bytes)
    except (VideoError, av.FFmpegError):
        return None
    if declared_s is None or not present.data_missing or declared_s - present.seconds <= TRUNCATION_TOLERANCE_S:
        return None
    first_frame = error.reason.removeprefix("truncated: ")
    return VideoTruncated(path, declared_s, present.seconds, f"{present.detail}; first frame: {first_frame}")


def probe_video(path: str | os.PathLike[str]) -> VideoProbe:
    """Cheap metadata check that also proves the first frame decodes; raises VideoError.

    VideoTruncated when the file's stream ends more than TRUNCATION_TOLERANCE_S before the declared
    duration: the header and first frame of a cut-off upload whose index survived look whole.
    """
    path = Path(path)
    size_bytes = _check_file(path)
    with _open_video_stream(path) as (container, stream):
        try:
            first_frame = _decode_first_frame(path, container, stream)
        except VideoError as error:
            truncated = _cut_before_first_frame(path, size_bytes, container, stream, error)
            if truncated is None:
                raise
            raise truncated from error
        fps = _stream_fps(path, stream)
        duration_s = _stream_duration_s(container, stream)
        if stream.frames > 0:
            num_frames = stream.frames
        elif duration_s is not None:
            num_frames = max(1, round(duration_s * fps))
        else:
            raise VideoError(path, "unknown duration and frame count")
        if duration_s is None:
            duration_s = num_frames / fps
        codec = stream.codec_context.name
    present = _present_duration_s(path, size_bytes)
    if duration_s - present.seconds > TRUNCATION_TOLERANCE_S:
        raise VideoTruncated(path, duration_s, present.seconds, present.detail)
    return VideoProbe(
        duration_s=duration_s,
        fps=fps,
        width=first_frame.width,
        height=first_frame.height,
        codec=codec,
        num_frames=num_frames,
        size_bytes=size_bytes,
        sha256=file_sha256(path),
    )


# --- Sampling -------------------------------------------------------------------------------------


def _frame_to_rgb(frame: av.VideoFrame) -> torch.Tensor:
    """One decoded frame as uint8 3 x H x W RGB (swscale, as torchcodec does)."""
    import torch

    return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)


def _resize_frame(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The recipe's resize on uint8 input (torchvision rounds and clamps back to uint8)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tv_functional

    return tv_functional.resize(
        rgb.unsqueeze(0), list(size), interpolation=InterpolationMode.BICUBIC, antialias=True
    ).squeeze(0)


@dataclass(frozen=True)
class _ResizeRule:
    min_pixels: int
    max_pixels: float
    factor: int = IMAGE_FACTOR

    def target(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels, factor=self.factor)


def _resize_target(path: Path, resize: _ResizeRule, frame: av.VideoFrame) -> tuple[int, int]:
    try:
        return resize.target(frame.height, frame.width)
    except ValueError as error:  # e.g. a 1-pixel-high or > 200:1 frame
        raise VideoError(path, f"unsupported frame size {frame.width}x{frame.height}: {error}") from error


def _decode_wanted(path: Path, wanted: list[int], resize: _ResizeRule) -> tuple[list[torch.Tensor], int]:
    """Decode sequentially, keeping only ``wanted`` indices; returns (kept frames, frames decoded)."""
    kept: list[torch.Tensor] = []
    position = 0  # next slot of `wanted` to fill (sorted, may repeat)
    decoded = 0
    size: tuple[int, int] | None = None
    with _open_video_stream(path) as (container, stream):
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if wanted[position] != index:
                    continue
                size = size or _resize_target(path, resize, frame)
                resized = _resize_frame(_frame_to_rgb(frame), size)
                while position < len(wanted) and wanted[position] == index:
                    kept.append(resized)
                    position += 1
                if position == len(wanted):
                    break
        except av.FFmpegError as error:
            raise _decode_failure(path, error, f"cannot decode frame {decoded}") from error
    return kept, decoded


def _sample_plan(
    total_frames: int, video_fps: float, fps: float, min_frames: int, max_frames: int, frame_factor: int
) -> list[int]:
    nframes = smart_nframes(
        total_frames, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames, frame_factor=frame_factor
    )
    return frame_indices(total_frames, nframes)


def sample_frames(
    path: str | os.PathLike[str],
    *,
    fps: float = RECIPE_FPS,
    max_pixels: int = RECIPE_MAX_PIXELS,
    min_pixels: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    factor: int = IMAGE_FACTOR,
    frame_factor: int = FRAME_FACTOR,
) -> SampledVideo:
    """The frames qwen-vl-utils' ``fetch_video`` gives for ``{"video": path, "fps": ..., ...}``.

    ``factor`` is the model's patch x merge size (28 for Qwen2.5-VL, 32 for Qwen3-VL, i.e. fetch_video's
    ``image_patch_size`` times 2); the default ``min_pixels`` (128 merged tokens) scales with it.
    Only the sampled frames are converted to RGB and kept, so memory does not grow with clip length.
    If fewer frames decode than the header promises (a cut-off recording), the plan is redone once on
    the decoded count. Raises VideoError for unusable files, ValueError for inconsistent arguments.
    """
    import torch

    path = Path(path)
    min_px = VIDEO_MIN_TOKENS * factor * factor if min_pixels is None else min_pixels
    if max_pixels < min_px:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_px})")
    with _open_video_stream(path) as (_, stream):
        video_fps = _stream_fps(path, stream)
        total_frames = _total_frames(path, stream)
    for _attempt in range(2):
        if total_frames < frame_factor:
            raise VideoError(path, f"too short: {total_frames} frame(s), need at least {frame_factor}")
        wanted = _sample_plan(total_frames, video_fps, fps, min_frames, max_frames, frame_factor)
        max_px = _effective_max_pixels(max_pixels, min_px, len(wanted), factor, frame_factor)
        resize = _ResizeRule(min_px, max_px, factor)
        kept, decoded = _decode_wanted(path, wanted, resize)
        if decoded == 0:
            raise VideoError(path, "truncated: decoded 0 frames")
        if len(kept) == len(wanted):
            return SampledVideo(
                frames=torch.stack(kept).float(),
                sample_fps=len(wanted) / total_frames * video_fps,
                frame_indices=wanted,
                video_fps=video_fps,
                total_frames=total_frames,
            )
        # Header over-stated the length (cut-off recording): re-plan on what actually decodes.
        total_frames = decoded
    raise VideoError(path, f"truncated: frame count unstable ({total_frames} decoded)")
