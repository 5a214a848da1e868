"""Tests for avdag.core.ingest.video: probing, bad inputs, and frame-exactness against qwen-vl-utils.

The reference tests run qwen-vl-utils 0.0.14 with its torchcodec reader (the reader it picks in the
recipe). torchcodec needs FFmpeg shared libraries; .ci/run must install them first:

    apt-get update && apt-get install -y ffmpeg
    .venv/bin/pip install torchcodec          # also listed in pyproject's [test] extra

Without them those tests skip (with the reason); everything else still runs.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tv_functional

from avdag.core.ingest import video
from avdag.core.ingest.video import (
    IMAGE_FACTOR,
    RECIPE_FPS,
    RECIPE_MAX_PIXELS,
    TRUNCATION_TOLERANCE_S,
    VIDEO_MIN_PIXELS,
    SampledVideo,
    VideoError,
    VideoTruncated,
    file_sha256,
    frame_indices,
    probe_video,
    sample_frames,
    smart_nframes,
    smart_resize,
)
from avdag.demo.sample_data import REAL_CLIP
from avdag_tests.support.media import cut_tail, faststart, top_level_boxes

# Per-frame mean |difference| (0..255 levels) allowed between our frames and the reference. Same
# frames from two FFmpeg builds differ by at most a level or so of colour-conversion rounding; the
# neighbouring source frame is >= 2.7 levels away on the real clip and far more on the synthetic
# one (asserted below, so the tolerance provably catches an off-by-one index).
PIXEL_TOLERANCE = 1.0
SYNTHETIC_FPS = 10
SYNTHETIC_FRAMES = 24  # 2.4 s -> 4 sampled frames at indices [0, 8, 15, 23]: exercises rounding
SYNTHETIC_SIZE = (180, 320)  # (height, width): below min_pixels, so the upscale branch is tested


# --- helpers --------------------------------------------------------------------------------------


def write_synthetic_clip(path: Path, *, num_frames: int = SYNTHETIC_FRAMES, fps: int = SYNTHETIC_FPS) -> Path:
    """H.264 clip (with B-frames) whose every frame differs strongly from its neighbours."""
    height, width = SYNTHETIC_SIZE
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            rgb = np.stack(
                [(cols * 2 + 12 * index) % 256, (rows * 3 + 20 * index) % 256, np.full_like(cols, 37 * index % 256)],
                axis=-1,
            ).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_audio_only_clip(path: Path) -> Path:
    """An .mp4 holding only a short AAC track."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def load_qwen_vl_utils_with_torchcodec(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """qwen_vl_utils forced onto torchcodec, with its silent torchvision fallback disabled."""
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "torchcodec")  # read at import time
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads the FFmpeg libraries)
    except Exception as error:  # ImportError, or RuntimeError when FFmpeg shared libs are missing
        pytest.skip(f"torchcodec cannot load (apt-get install -y ffmpeg; pip install torchcodec): {error}")
    import qwen_vl_utils.vision_process as vision_process

    monkeypatch.setattr(vision_process, "FORCE_QWENVL_VIDEO_READER", "torchcodec")
    vision_process.get_video_reader_backend.cache_clear()

    def no_fallback(ele: dict[str, Any]) -> None:
        raise AssertionError(f"qwen-vl-utils fell back to torchvision for {ele['video']}")

    monkeypatch.setitem(vision_process.VIDEO_READER_BACKENDS, "torchvision", no_fallback)
    return vision_process


def reference_sample(vision_process: ModuleType, path: Path) -> tuple[torch.Tensor, float]:
    """The recipe's call: frames and sample fps from process_vision_info."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "video", "video": str(path), "fps": 2, "max_pixels": RECIPE_MAX_PIXELS}],
        }
    ]
    _, videos, video_kwargs = vision_process.process_vision_info(messages, return_video_kwargs=True)
    vision_process.get_video_reader_backend.cache_clear()
    return videos[0], video_kwargs["fps"][0]


def decode_resized_with_torchcodec(path: Path, indices: list[int], size: tuple[int, int]) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    frames = VideoDecoder(str(path)).get_frames_at(indices=indices).data
    return tv_functional.resize(frames, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True).float()


def per_frame_mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=(1, 2, 3))


def neighbour_indices(indices: list[int], total_frames: int) -> list[int]:
    return [index + 1 if index + 1 < total_frames else index - 1 for index in indices]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_clip(tmp_path_factory.mktemp("video") / "synthetic.mp4")


@pytest.fixture(params=["real", "synthetic"])
def clip(request: pytest.FixtureRequest, synthetic_clip: Path) -> Path:
    return REAL_CLIP if request.param == "real" else synthetic_clip


@pytest.fixture
def reference_and_ours(clip: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, float, SampledVideo]:
    vision_process = load_qwen_vl_utils_with_torchcodec(monkeypatch)
    reference, reference_fps = reference_sample(vision_process, clip)
    return reference, reference_fps, sample_frames(clip)


# --- 1. reference equivalence ---------------------------------------------------------------------


def test_frames_match_qwen_vl_utils(clip: Path, reference_and_ours: tuple[torch.Tensor, float, SampledVideo]) -> None:
    reference, reference_fps, ours = reference_and_ours
    assert ours.frames.dtype == reference.dtype == torch.float32
    assert ours.frames.shape == reference.shape
    assert ours.sample_fps == pytest.approx(reference_fps, rel=1e-12)

    diffs = per_frame_mean_abs_diff(ours.frames, reference)
    print(
        f"\n{clip.name}: mean abs pixel diff vs qwen-vl-utils/torchcodec = {diffs.mean():.4f} "
        f"(max frame {diffs.max():.4f})"
    )
    assert diffs.max() <= PIXEL_TOLERANCE

    # The tolerance must be able to see a wrong frame: each neighbour frame is further away than it.
    total_frames = probe_video(clip).num_frames
    size = tuple(reference.shape[-2:])
    shifted = decode_resized_with_torchcodec(clip, neighbour_indices(ours.frame_indices, total_frames), size)
    assert per_frame_mean_abs_diff(shifted, reference).min() > 2 * PIXEL_TOLERANCE


def test_processor_video_grid_matches(reference_and_ours: tuple[torch.Tensor, float, SampledVideo]) -> None:
    from transformers import Qwen2VLVideoProcessor

    reference, _, ours = reference_and_ours
    processor = Qwen2VLVideoProcessor()
    ours_out = processor(videos=[ours.frames], do_resize=False, return_tensors="pt")
    reference_out = processor(videos=[reference], do_resize=False, return_tensors="pt")
    assert torch.equal(ours_out["video_grid_thw"], reference_out["video_grid_thw"])
    t, h, w = ours_out["video_grid_thw"][0].tolist()
    assert (t, h, w) == (len(ours.frame_indices) // 2, ours.frames.shape[2] // 14, ours.frames.shape[3] // 14)
    # Normalised pixels: 1 level / 255 / std(~0.27) ~= 0.015 per level.
    assert (ours_out["pixel_values_videos"] - reference_out["pixel_values_videos"]).abs().mean() < 0.015


def test_non_default_settings_match_qwen_vl_utils(synthetic_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other fps / pixel bounds: a different frame count and no upscale (180x320 -> 168x308)."""
    vision_process = load_qwen_vl_utils_with_torchcodec(monkeypatch)
    element = {"video": str(synthetic_clip), "fps": 4, "min_pixels": 64 * 28 * 28, "max_pixels": 360 * 640}
    reference, reference_fps = vision_process.fetch_video(element, return_video_sample_fps=True)
    ours = sample_frames(synthetic_clip, fps=4, min_pixels=64 * 28 * 28, max_pixels=360 * 640)
    assert ours.frames.shape == reference.shape == (8, 3, 168, 308)
    assert ours.sample_fps == pytest.approx(reference_fps, rel=1e-12)
    assert per_frame_mean_abs_diff(ours.frames, reference).max() <= PIXEL_TOLERANCE


@pytest.mark.parametrize(
    "total_frames,video_fps", [(221, 25.0), (24, 10.0), (3, 30.0), (9000, 30.0), (181, 29.97), (60, 2.0), (5, 1.0)]
)
@pytest.mark.parametrize("fps", [2.0, 0.5, 4.0])
def test_frame_count_and_indices_match_recipe(total_frames: int, video_fps: float, fps: float) -> None:
    vision_process = pytest.importorskip("qwen_vl_utils.vision_process")
    expected = vision_process.smart_nframes({"fps": fps}, total_frames=total_frames, video_fps=video_fps)
    nframes = smart_nframes(total_frames, video_fps, fps=fps)
    assert nframes == expected
    assert frame_indices(total_frames, nframes) == torch.linspace(0, total_frames - 1, expected).round().long().tolist()


@pytest.mark.parametrize(
    "height,width",
    [(540, 960), (180, 320), (1080, 1920), (1208, 1920), (28, 28), (480, 640), (100, 5000), (2160, 3840)],
)
@pytest.mark.parametrize("max_pixels", [RECIPE_MAX_PIXELS, RECIPE_MAX_PIXELS + 1, 768 * 28 * 28])
def test_resize_target_matches_recipe(height: int, width: int, max_pixels: int) -> None:
    vision_process = pytest.importorskip("qwen_vl_utils.vision_process")
    expected = vision_process.smart_resize(
        height, width, factor=IMAGE_FACTOR, min_pixels=VIDEO_MIN_PIXELS, max_pixels=max_pixels
    )
    assert smart_resize(height, width, min_pixels=VIDEO_MIN_PIXELS, max_pixels=max_pixels) == expected


@pytest.mark.parametrize("factor", [28, 32], ids=["qwen2_5_vl", "qwen3_vl"])
def test_resize_sweep_matches_recipe_and_max_pixels_plus_one_is_not_the_same(factor: int) -> None:
    """Every even size up to 4:1 against qwen-vl-utils at the recipe budget for both patch sizes; the
    budget + 1 (a float-error guard) resizes some exact-fit sizes differently, so it is not equivalent."""
    vision_process = pytest.importorskip("qwen_vl_utils.vision_process")
    budget, min_pixels = 16 * 9 * factor * factor, 128 * factor * factor
    differ = []
    for height in range(100, 1300, 6):
        for width in range(height, min(4 * height, 2000) + 1, 6):
            ours = smart_resize(height, width, min_pixels=min_pixels, max_pixels=budget, factor=factor)
            assert ours == vision_process.smart_resize(height, width, factor, min_pixels, budget)
            if ours != vision_process.smart_resize(height, width, factor, min_pixels, budget + 1):
                differ.append((height, width))
    assert differ, "expected exact-fit sizes where max_pixels + 1 rounds differently"
    if factor == IMAGE_FACTOR:
        assert smart_resize(214, 856, min_pixels=min_pixels, max_pixels=budget) == (140, 644)
        assert smart_resize(214, 856, min_pixels=min_pixels, max_pixels=budget + 1) == (168, 672)


# --- 2. probe -------------------------------------------------------------------------------------


def test_probe_real_clip() -> None:
    probe = probe_video(REAL_CLIP)
    assert probe.duration_s == pytest.approx(8.84, abs=0.05)
    assert (probe.width, probe.height) == (960, 540)
    assert probe.fps == pytest.approx(25.0)
    assert probe.codec == "h264"
    assert probe.num_frames == 221
    assert probe.size_bytes == REAL_CLIP.stat().st_size
    assert probe.sha256 == hashlib.sha256(REAL_CLIP.read_bytes()).hexdigest() == file_sha256(REAL_CLIP)


def test_probe_synthetic_clip(synthetic_clip: Path) -> None:
    probe = probe_video(synthetic_clip)
    assert (probe.width, probe.height, probe.fps, probe.num_frames) == (320, 180, SYNTHETIC_FPS, SYNTHETIC_FRAMES)
    assert probe.duration_s == pytest.approx(SYNTHETIC_FRAMES / SYNTHETIC_FPS, abs=0.11)


# --- 2b. uploads cut short after their index ------------------------------------------------------


def test_probe_flags_the_real_clip_cut_after_its_index(tmp_path: Path) -> None:
    """moov intact, 10% of mdat left: header says 8.84 s / 221 frames and the first frame decodes."""
    path = tmp_path / "cut.mp4"
    path.write_bytes(cut_tail(REAL_CLIP, 0.1))
    kinds = [kind for kind, _, _ in top_level_boxes(path.read_bytes())]
    assert kinds.index("moov") < kinds.index("mdat")  # the index survived the cut
    with pytest.raises(VideoTruncated) as caught:
        probe_video(path)
    error = caught.value
    assert error.declared_s == pytest.approx(8.84, abs=0.05)
    assert 0 < error.decodable_s < 0.2 * error.declared_s
    assert error.reason.startswith("truncated:")
    assert f"{error.declared_s:.2f}s" in error.reason and f"{error.decodable_s:.2f}s" in error.reason
    assert isinstance(error, VideoError)  # callers that only know VideoError still reject it


def test_probe_flags_a_synthetic_clip_cut_after_its_index(tmp_path: Path) -> None:
    """PyAV writes moov last: the helper moves it to the front with ffmpeg, then cuts half the mdat."""
    source = write_synthetic_clip(tmp_path / "long.mp4", num_frames=60)
    path = tmp_path / "cut.mp4"
    path.write_bytes(cut_tail(source, 0.5))
    with pytest.raises(VideoTruncated) as caught:
        probe_video(path)
    assert caught.value.declared_s == pytest.approx(6.0, abs=0.11)
    assert caught.value.declared_s - caught.value.decodable_s > TRUNCATION_TOLERANCE_S


@pytest.mark.parametrize("keep_fraction", [0.0, 0.001, 0.01])
def test_probe_flags_an_upload_cut_before_its_first_frame(tmp_path: Path, keep_fraction: float) -> None:
    """Index intact, the mdat cut inside (or before) the first frame: nothing decodes, but the index
    declares 8.84 s whose bytes never arrived, so it is a cut upload, not an undecodable video."""
    path = tmp_path / "cut_early.mp4"
    path.write_bytes(cut_tail(REAL_CLIP, keep_fraction))
    with pytest.raises(VideoTruncated) as caught:
        probe_video(path)
    error = caught.value
    assert error.declared_s == pytest.approx(8.84, abs=0.05)
    assert error.decodable_s == 0.0
    assert "0 of 221 frames' data present" in error.reason and "first frame:" in error.reason


def test_a_whole_file_whose_frames_do_not_decode_is_not_called_truncated(tmp_path: Path) -> None:
    """Every byte the index names is there, but it is zeros: corrupt, not cut (the control for the above)."""
    data = bytearray(faststart(REAL_CLIP))
    (_, offset, _) = next(box for box in top_level_boxes(bytes(data)) if box[0] == "mdat")
    data[offset + 8 :] = bytes(len(data) - offset - 8)
    path = tmp_path / "zeros.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError) as caught:
        probe_video(path)
    assert not isinstance(caught.value, VideoTruncated)
    assert caught.value.reason.startswith("cannot decode"), caught.value.reason


def test_probe_flags_a_tail_that_is_present_but_not_video(tmp_path: Path) -> None:
    """A preallocated file never filled: every byte range is there, the last 30% are zeros."""
    data = bytearray(REAL_CLIP.read_bytes())
    start = int(len(data) * 0.7)
    data[start:] = bytes(len(data) - start)
    path = tmp_path / "zero_tail.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoTruncated, match="do not decode") as caught:
        probe_video(path)
    assert 4.0 < caught.value.decodable_s < 8.0


@pytest.mark.parametrize("kind", ["real", "synthetic", "synthetic_faststart"])
def test_whole_clips_are_not_flagged(kind: str, synthetic_clip: Path, tmp_path: Path) -> None:
    if kind == "real":
        path = REAL_CLIP
    elif kind == "synthetic":
        path = synthetic_clip
    else:
        path = tmp_path / "faststart.mp4"
        path.write_bytes(faststart(synthetic_clip))
    probe = probe_video(path)
    assert probe.num_frames in (221, SYNTHETIC_FRAMES)


# --- 3. bad inputs --------------------------------------------------------------------------------


def _zero_byte(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def _json_renamed(tmp_path: Path) -> Path:
    path = tmp_path / "labels.mp4"
    path.write_text(json.dumps({"weather": "Clear skies", "frames": [1, 2, 3]}))
    return path


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "cut.mp4"
    path.write_bytes(REAL_CLIP.read_bytes()[:2048])
    return path


def _audio_only(tmp_path: Path) -> Path:
    return write_audio_only_clip(tmp_path / "audio.mp4")


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nope.mp4"


def _single_frame(tmp_path: Path) -> Path:
    return write_synthetic_clip(tmp_path / "one.mp4", num_frames=1)


@pytest.mark.parametrize(
    "make_file,reason_words",
    [
        (_zero_byte, ["zero-byte"]),
        (_json_renamed, ["not a video", "text"]),
        (_truncated, ["truncated", "moov"]),
        (_audio_only, ["no video stream"]),
        (_missing, ["not found"]),
    ],
)
@pytest.mark.parametrize("reader", [probe_video, sample_frames])
def test_bad_inputs_raise_video_error(tmp_path: Path, make_file: Any, reason_words: list[str], reader: Any) -> None:
    path = make_file(tmp_path)
    with pytest.raises(VideoError) as caught:
        reader(path)
    error = caught.value
    assert error.path == str(path)
    assert all(word in error.reason for word in reason_words), error.reason
    assert str(path) in str(error) and error.reason in str(error)


def test_max_pixels_below_min_pixels_is_an_argument_error() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        sample_frames(REAL_CLIP, max_pixels=VIDEO_MIN_PIXELS - 1)


def test_single_frame_clip_is_too_short_to_sample(tmp_path: Path) -> None:
    path = _single_frame(tmp_path)
    assert probe_video(path).num_frames == 1
    with pytest.raises(VideoError, match="too short"):
        sample_frames(path)


# --- 4. sampling behaviour ------------------------------------------------------------------------


def test_synthetic_sampling_follows_recipe_arithmetic(synthetic_clip: Path) -> None:
    sampled = sample_frames(synthetic_clip)
    assert sampled.frame_indices == [0, 8, 15, 23]
    assert sampled.sample_fps == pytest.approx(4 / SYNTHETIC_FRAMES * SYNTHETIC_FPS)
    assert sampled.frames.shape == (4, 3, 252, 448)  # 180x320 scaled up to >= VIDEO_MIN_PIXELS
    assert sampled.frames.dtype == torch.float32
    assert 0 <= sampled.frames.min() and sampled.frames.max() <= 255
    assert torch.equal(sampled.frames, sampled.frames.round())  # uint8 resize, then float()


def test_only_sampled_frames_are_converted_to_rgb(monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[tuple[int, int]] = []
    original = video._frame_to_rgb

    def counting_frame_to_rgb(frame: av.VideoFrame) -> torch.Tensor:
        converted.append((frame.height, frame.width))
        return original(frame)

    monkeypatch.setattr(video, "_frame_to_rgb", counting_frame_to_rgb)
    sampled = sample_frames(REAL_CLIP, fps=RECIPE_FPS)
    assert len(converted) == len(set(sampled.frame_indices)) == 16
    assert len(converted) < probe_video(REAL_CLIP).num_frames


def test_cut_off_recording_is_resampled_from_decodable_frames(tmp_path: Path) -> None:
    """Header says 221 frames but only ~108 decode: plan again on what decodes, as torchvision would."""
    path = tmp_path / "cut_off.mp4"
    path.write_bytes(REAL_CLIP.read_bytes()[:1_300_000])
    sampled = sample_frames(path)
    assert sampled.frame_indices[0] == 0 and sampled.frame_indices[-1] < 221 // 2
    assert sampled.frames.shape[0] == len(sampled.frame_indices) == 8
    assert sampled.sample_fps == pytest.approx(8 / (sampled.frame_indices[-1] + 1) * 25)
