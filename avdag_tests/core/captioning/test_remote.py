"""OpenAIVlmCaptioner against real HTTP servers on loopback, with the real openai client and real clips.

Every clip here is one solid colour, a corner of the RGB cube, so a stub server can tell from the
frames it received which clip a request is for, and answer or fail per clip.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from avdag.core.captioning.answers import parse_answer
from avdag.core.captioning.model import CaptionOutput, GenerationSettings
from avdag.core.captioning.model_family import QWEN3_VL
from avdag.core.captioning.remote import OpenAIVlmCaptioner, ServedCaptionOutput, remote_model_hash
from avdag.core.common.http_retry import retry_after_s
from avdag.core.ingest.video import sample_frames
from avdag.demo.sample_data import REAL_CLIP
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply, chat_completion_body

SYSTEM_PROMPT = "You are a careful dashcam annotator."
USER_PROMPT = "Fill in the 15-field rubric as one JSON object."
MODEL = "nvidia/Cosmos-Reason1-7B"
# Mean |difference| (grey levels) allowed between a received JPEG frame and the sampled frame.
JPEG_TOLERANCE = 2.0


# --------------------------------------------------------------------------- clips and requests


def clip_colour(number: int) -> tuple[int, int, int]:
    """Clip `number` (0-7) is the cube corner whose channels spell its bits."""
    return tuple(215 if number >> bit & 1 else 40 for bit in (2, 1, 0))


def write_colour_clip(path: Path, colour: tuple[int, int, int], num_frames: int = 24, fps: int = 10) -> str:
    """A tiny H.264 clip of one colour (2.4 s at 10 fps: sample_frames takes 4 frames, at 5/3 fps)."""
    frame = np.full((64, 112, 3), colour, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 112, 64, "yuv420p"
        for _ in range(num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("colour_clips")
    return [write_colour_clip(folder / f"clip{number}.mp4", clip_colour(number)) for number in range(8)]


def user_content(request: dict[str, Any]) -> list[dict[str, Any]]:
    return next(message["content"] for message in request["messages"] if message["role"] == "user")


def request_frames(request: dict[str, Any]) -> list[Image.Image]:
    """The frames a request carries, whether as image parts or as one vLLM video of JPEGs."""
    encoded: list[str] = []
    for part in user_content(request):
        if part["type"] == "image_url":
            encoded.append(part["image_url"]["url"].removeprefix("data:image/jpeg;base64,"))
        elif part["type"] == "video_url":
            encoded.extend(part["video_url"]["url"].removeprefix("data:video/jpeg;base64,").split(","))
    return [Image.open(io.BytesIO(base64.b64decode(frame, validate=True))) for frame in encoded]


def clip_number(request: dict[str, Any]) -> int:
    """Which colour clip a request shows, read back from its first frame."""
    means = np.asarray(request_frames(request)[0].convert("RGB"), dtype=float).mean(axis=(0, 1))
    return sum(1 << bit for bit, mean in zip((2, 1, 0), means) if mean > 128)


def answer(request: dict[str, Any]) -> str:
    return f"answer {clip_number(request)}"


def collect(stream) -> dict[int, CaptionOutput]:
    """All outputs by index, failing if any index comes twice."""
    outputs: dict[int, CaptionOutput] = {}
    for index, output in stream:
        assert index not in outputs, f"index {index} yielded twice"
        outputs[index] = output
    return outputs


def caption_all(captioner: OpenAIVlmCaptioner, paths: list[str]) -> dict[int, CaptionOutput]:
    outputs = collect(captioner.caption_stream(paths, SYSTEM_PROMPT, USER_PROMPT))
    assert sorted(outputs) == list(range(len(paths)))
    return outputs


class PerClipCounter:
    """Counts requests per clip from the stub's handler threads."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def count(self, request: dict[str, Any]) -> tuple[int, int]:
        """(clip number, how many requests for it so far, this one included)."""
        number = clip_number(request)
        with self._lock:
            self.counts[number] += 1
            return number, self.counts[number]


def captioner_for(*servers: OpenAIStubServer, **options: Any) -> OpenAIVlmCaptioner:
    return OpenAIVlmCaptioner([server.base_url for server in servers], MODEL, **({"timeout_s": 10.0} | options))


# --------------------------------------------------------------------------- what a request carries


def test_request_carries_prompts_sampled_frames_and_generation_settings() -> None:
    settings = GenerationSettings(max_new_tokens=321, temperature=0.1, top_p=0.8, repetition_penalty=1.07)
    reply = '{"weather": "Clear"}'
    with OpenAIStubServer(lambda request: reply) as server:
        outputs = caption_all(captioner_for(server, settings=settings), [str(REAL_CLIP)])

    [request] = server.requests
    assert request["model"] == MODEL
    assert (request["max_tokens"], request["temperature"], request["top_p"]) == (321, 0.1, 0.8)
    assert request["repetition_penalty"] == 1.07
    assert request["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert request["messages"][1]["role"] == "user"
    [video, text] = user_content(request)  # by default the clip is one video, as the recipe trains
    assert video["type"] == "video_url" and text == {"type": "text", "text": USER_PROMPT}

    sampled = sample_frames(REAL_CLIP, fps=settings.fps, max_pixels=settings.max_pixels)
    frames = request_frames(request)
    assert len(frames) == len(sampled.frame_indices) == 16
    height, width = sampled.frames.shape[2:]
    for image, reference in zip(frames, sampled.frames):
        assert (image.format, image.size) == ("JPEG", (width, height))
        received = np.asarray(image.convert("RGB"), dtype=float)
        assert np.abs(received - reference.permute(1, 2, 0).numpy()).mean() < JPEG_TOLERANCE
    # Sampled frames differ from each other by more than the tolerance: a wrong frame or order fails.
    neighbours = (sampled.frames[1:] - sampled.frames[:-1]).abs().mean(dim=(1, 2, 3))
    assert neighbours.min() > JPEG_TOLERANCE

    tokens_per_frame = (height // 28) * (width // 28)
    assert outputs[0] == ServedCaptionOutput(
        raw_text=reply, prompt_tokens=10, video_tokens=8 * tokens_per_frame, new_tokens=2, seconds=outputs[0].seconds
    )  # 16 frames merge into 8 temporal patches
    assert outputs[0].seconds > 0 and outputs[0].answer_field == "content"


def test_frames_transport_sends_one_image_per_frame_and_no_video_fields(clips: list[str]) -> None:
    with OpenAIStubServer(answer) as server:
        outputs = caption_all(captioner_for(server, video_transport="frames"), [clips[6]])

    [request] = server.requests
    assert "mm_processor_kwargs" not in request and "media_io_kwargs" not in request  # portable request
    *images, text = user_content(request)
    assert [part["type"] for part in images] == ["image_url"] * 4 and text["type"] == "text"
    height, width = sample_frames(clips[6]).frames.shape[2:]
    assert outputs[0].raw_text == "answer 6"
    assert outputs[0].video_tokens == 4 * (height // 28) * (width // 28)  # each image a temporal patch: 2x video


def test_qwen2_5_vl_request_is_one_vllm_video_at_the_sampled_fps(clips: list[str]) -> None:
    with OpenAIStubServer(answer) as server:
        outputs = caption_all(captioner_for(server), [clips[5]])

    [request] = server.requests
    [video, text] = user_content(request)
    assert video["type"] == "video_url" and video["video_url"]["url"].startswith("data:video/jpeg;base64,")
    assert text == {"type": "text", "text": USER_PROMPT}
    sampled = sample_frames(clips[5])
    assert len(request_frames(request)) == len(sampled.frame_indices) == 4
    assert sampled.sample_fps != 2.0  # so a hard-coded recipe fps would fail below
    assert request["mm_processor_kwargs"] == {"fps": sampled.sample_fps}
    assert request["media_io_kwargs"] == {"video": {"num_frames": -1, "fps": sampled.sample_fps}}
    height, width = sampled.frames.shape[2:]
    assert outputs[0].raw_text == "answer 5"
    assert outputs[0].video_tokens == 2 * (height // 28) * (width // 28)  # 4 frames merge into 2


def qwen3_vl_timestamps(media_io_video: dict[str, Any]) -> list[float]:
    """The `<t seconds>` markers vLLM's Qwen3-VL writes for a pre-sampled video (do_sample_frames False).

    Mirrors `Qwen3VLProcessingInfo._calculate_timestamps` (vllm/model_executor/models/qwen3_vl.py): the
    metadata's frames_indices / fps, padded to pairs, averaged over each two-frame temporal patch.
    """
    indices, fps = list(media_io_video["frames_indices"]), media_io_video["fps"]
    indices += indices[-1:] * (len(indices) % 2)
    seconds = [index / fps for index in indices]
    return [(seconds[i] + seconds[i + 1]) / 2 for i in range(0, len(seconds), 2)]


def test_qwen3_vl_request_carries_the_source_timing_its_timestamps_come_from(tmp_path: Path) -> None:
    clip = write_colour_clip(tmp_path / "long.mp4", clip_colour(3), num_frames=63, fps=10)  # 6.3 s
    with OpenAIStubServer(answer) as server:
        outputs = caption_all(captioner_for(server, family="qwen3_vl"), [clip])

    [request] = server.requests
    [video, _] = user_content(request)
    assert video["type"] == "video_url" and video["video_url"]["url"].startswith("data:video/jpeg;base64,")
    assert "mm_processor_kwargs" not in request  # nothing may ask the processor to sample again
    sent = request["media_io_kwargs"]["video"]
    sampled = sample_frames(clip, factor=32, max_pixels=QWEN3_VL.max_pixels)
    assert sampled.frame_indices == [0, 6, 11, 17, 23, 28, 34, 39, 45, 51, 56, 62]  # steps of 5 and 6 frames
    assert sent == {
        "num_frames": -1,
        "fps": 10.0,
        "frames_indices": sampled.frame_indices,
        "total_num_frames": 63,
        "duration": 6.3,
        "do_sample_frames": False,
    }
    frames = request_frames(request)
    assert len(frames) == len(sampled.frame_indices)
    assert all(image.size[0] % 32 == 0 and image.size[1] % 32 == 0 for image in frames)  # Qwen3-VL patches
    # The markers name where each temporal patch sits in the clip, not its position in the list.
    assert [round(t, 2) for t in qwen3_vl_timestamps(sent)] == [0.3, 1.4, 2.55, 3.65, 4.8, 5.9]
    as_consecutive = {"frames_indices": list(range(12)), "fps": sampled.sample_fps}  # vLLM's default metadata
    assert [round(t, 2) for t in qwen3_vl_timestamps(as_consecutive)] == [0.26, 1.31, 2.36, 3.41, 4.46, 5.51]
    height, width = sampled.frames.shape[2:]
    assert outputs[0].video_tokens == 6 * (height // 32) * (width // 32)
    assert outputs[0].raw_text == "answer 3"


# --------------------------------------------------------------------------- concurrency and endpoints


def test_many_clips_in_flight_but_never_more_than_max_in_flight(clips: list[str]) -> None:
    with OpenAIStubServer(lambda request: StubReply(content=answer(request), delay_s=0.3)) as server:
        outputs = caption_all(captioner_for(server, max_in_flight=4), clips)

    assert [outputs[index].raw_text for index in range(8)] == [f"answer {number}" for number in range(8)]
    assert len(server.requests) == 8
    assert 1 < server.max_concurrent_requests <= 4


def test_clips_spread_over_endpoints_each_within_its_bound(clips: list[str]) -> None:
    def slow_answer(request: dict[str, Any]) -> StubReply:
        return StubReply(content=answer(request), delay_s=0.2)

    with OpenAIStubServer(slow_answer) as first, OpenAIStubServer(slow_answer) as second:
        outputs = caption_all(captioner_for(first, second, max_in_flight=2), clips)

    assert [outputs[index].raw_text for index in range(8)] == [f"answer {number}" for number in range(8)]
    assert len(first.requests) + len(second.requests) == 8
    assert first.requests and second.requests
    assert first.max_concurrent_requests <= 2 and second.max_concurrent_requests <= 2


def test_closing_the_stream_early_stops_taking_new_clips(clips: list[str]) -> None:
    with OpenAIStubServer(lambda request: StubReply(content=answer(request), delay_s=0.2)) as server:
        stream = captioner_for(server, max_in_flight=1).caption_stream(clips, SYSTEM_PROMPT, USER_PROMPT)
        next(stream)
        stream.close()  # returns once the clip in flight is done
        assert len(server.requests) <= 2


# --------------------------------------------------------------------------- faults


def test_rate_limit_and_server_error_are_retried_then_succeed(clips: list[str]) -> None:
    counter = PerClipCounter()

    def reply_fn(request: dict[str, Any]) -> str | StubReply:
        number, attempt = counter.count(request)
        if number == 1 and attempt == 1:
            return StubReply(status=429, content="slow down", headers={"retry-after": "0"})
        if number == 2 and attempt == 1:
            return StubReply(status=500, content="hiccup", headers={"retry-after-ms": "10"})
        return f"answer {number}"

    with OpenAIStubServer(reply_fn) as server:
        outputs = caption_all(captioner_for(server, max_retries=2), clips[:3])

    assert [(outputs[index].raw_text, outputs[index].error) for index in range(3)] == [
        ("answer 0", None),
        ("answer 1", None),
        ("answer 2", None),
    ]
    assert counter.counts == {0: 1, 1: 2, 2: 2}


def test_clip_that_keeps_failing_gets_an_error_and_the_others_still_succeed(clips: list[str]) -> None:
    counter = PerClipCounter()

    def reply_fn(request: dict[str, Any]) -> str | StubReply:
        number, _ = counter.count(request)
        if number == 1:
            return StubReply(status=500, content="boom", headers={"retry-after-ms": "1"})
        return f"answer {number}"

    with OpenAIStubServer(reply_fn) as server:
        outputs = caption_all(captioner_for(server, max_retries=2), clips[:4])

    assert outputs[1] == CaptionOutput("", 0, 0, 0, outputs[1].seconds, error="HTTP 500 after 3 attempts: boom")
    assert [(outputs[index].raw_text, outputs[index].error) for index in (0, 2, 3)] == [
        ("answer 0", None),
        ("answer 2", None),
        ("answer 3", None),
    ]
    assert counter.counts == {0: 1, 1: 3, 2: 1, 3: 1}


def test_client_error_is_not_retried(clips: list[str]) -> None:
    with OpenAIStubServer(lambda request: StubReply(status=400, content="too many images")) as server:
        outputs = caption_all(captioner_for(server, max_retries=2), clips[:1])
    assert outputs[0].error == "HTTP 400 after 1 attempt: too many images"
    assert len(server.requests) == 1


def test_timeout_becomes_an_error(clips: list[str]) -> None:
    def reply_fn(request: dict[str, Any]) -> StubReply:
        return StubReply(content=answer(request), delay_s=1.5 if clip_number(request) == 1 else 0.0)

    with OpenAIStubServer(reply_fn) as server:
        outputs = caption_all(captioner_for(server, timeout_s=0.5, max_retries=0), clips[:3])

    assert outputs[1].error == "APITimeoutError after 1 attempt: Request timed out."
    assert [outputs[index].raw_text for index in (0, 2)] == ["answer 0", "answer 2"]


def test_unreadable_video_becomes_an_error_naming_the_file(clips: list[str], tmp_path: Path) -> None:
    not_a_video = tmp_path / "notes.camera_front_wide_120fov.mp4"
    not_a_video.write_text('{"this": "is a label, not a video"}')
    missing = tmp_path / "gone.mp4"
    with OpenAIStubServer(answer) as server:
        outputs = caption_all(captioner_for(server), [str(not_a_video), str(missing), clips[3]])

    assert outputs[0].error.startswith(f"{not_a_video}: not a video")
    assert outputs[1].error == f"{missing}: file not found"
    assert (outputs[2].raw_text, outputs[2].error) == ("answer 3", None)
    assert len(server.requests) == 1  # nothing is sent for a clip that does not decode


def test_empty_reply_is_an_error_and_missing_usage_counts_zero(clips: list[str]) -> None:
    def reply_fn(request: dict[str, Any]) -> StubReply:
        body = chat_completion_body(MODEL, answer(request), 0)
        if clip_number(request) == 0:
            body["choices"][0]["message"]["content"] = None  # e.g. all of it went to a reasoning parser
        else:
            del body["usage"]
        return StubReply(body=json.dumps(body))

    with OpenAIStubServer(reply_fn) as server:
        outputs = caption_all(captioner_for(server), clips[:2])

    assert outputs[0].error == f"empty reply from {server.base_url}/ (finish_reason=stop)"
    assert (outputs[1].raw_text, outputs[1].prompt_tokens, outputs[1].new_tokens, outputs[1].error) == (
        "answer 1",
        0,
        0,
        None,
    )


ANSWER_JSON = '{"weather": "Clear", "time_of_day": "Day"}'


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_answer_left_in_the_reasoning_field_is_read_from_there(clips: list[str], field: str) -> None:
    """A reasoning parser puts a reply whose <think> never closed in reasoning_content/reasoning; content is null."""
    reply = StubReply(content=None, reasoning=f"<think>\nThe road is dry.\n{ANSWER_JSON}", reasoning_field=field)
    with OpenAIStubServer(lambda request: reply) as server:
        outputs = caption_all(captioner_for(server), clips[:1])

    assert server.requests and outputs[0].error is None
    assert outputs[0].answer_field == field
    assert outputs[0].raw_text == f"The road is dry.\n{ANSWER_JSON}"
    assert parse_answer(outputs[0].raw_text).data == {"weather": "Clear", "time_of_day": "Day"}


def test_thinking_beside_the_answer_is_kept_in_the_raw_text_but_out_of_the_parsed_json(clips: list[str]) -> None:
    thinking = 'First guess {"weather": "Rain"}, but the road is dry.'
    reply = StubReply(content=f"<answer>{ANSWER_JSON}</answer>", reasoning=thinking, reasoning_field="reasoning")
    with OpenAIStubServer(lambda request: reply) as server:
        outputs = caption_all(captioner_for(server), clips[:1])

    assert outputs[0].answer_field == "content"
    assert outputs[0].raw_text == f"<think>\n{thinking}\n</think>\n\n<answer>{ANSWER_JSON}</answer>"
    assert parse_answer(outputs[0].raw_text).data == {"weather": "Clear", "time_of_day": "Day"}


# --------------------------------------------------------------------------- what the server admits


def test_clip_longer_than_the_servers_admit_is_reported_with_the_flag_and_not_sent(clips: list[str]) -> None:
    with OpenAIStubServer(answer) as server:
        video = caption_all(captioner_for(server, server_max_frames=2), clips[:1])
        frames = caption_all(captioner_for(server, server_max_frames=3, video_transport="frames"), clips[:1])

    assert not server.requests
    assert video[0].error == (
        f"{clips[0]}: clip has 4 frames but the servers take at most 2 frames per video (server_max_frames): "
        """start vLLM with --limit-mm-per-prompt '{"video": {"count": 1, "num_frames": 4}}'; the longest clip """
        "avdag samples has 768, then raise server_max_frames to match"
    )
    assert "at most 3 images per prompt" in frames[0].error
    assert """--limit-mm-per-prompt '{"image": 4}'""" in frames[0].error


def test_server_refusing_too_many_images_names_the_limit_to_raise_and_is_not_retried(clips: list[str]) -> None:
    with OpenAIStubServer(answer, limit_mm_per_prompt={"image": 2}) as server:
        outputs = caption_all(captioner_for(server, video_transport="frames", max_retries=2), clips[:1])
        as_video = caption_all(captioner_for(server), clips[1:2])

    assert outputs[0].error == (
        "HTTP 400 after 1 attempt: At most 2 image(s) may be provided in one prompt. Set `--limit-mm-per-prompt` "
        """to increase this limit.; the clip has 4 frames: start vLLM with --limit-mm-per-prompt '{"image": 4}'"""
    )
    assert len(server.requests) == 2  # the refused one once, then the same server takes the clip as one video
    assert (as_video[0].raw_text, as_video[0].error) == ("answer 1", None)


@pytest.mark.parametrize(
    ("message", "advice"),
    [
        (
            "The decoder prompt contains a(n) video item with 20160 embedding tokens, which exceeds the "
            "pre-allocated encoder cache size 16384. Please reduce the input size or increase the encoder cache "
            "size by setting --limit-mm-per-prompt at startup.",
            "the clip has 4 frames: start vLLM with "
            """--limit-mm-per-prompt '{"video": {"count": 1, "num_frames": 4}}'""",
        ),
        (
            "The decoder prompt (length 70000) is longer than the maximum model length of 65536. Make sure that "
            "`max_model_len` is no smaller than the number of text tokens plus multimodal tokens.",
            "start vLLM with --max-model-len 71024 (prompt 70000 + max_tokens 1024)",
        ),
    ],
)
def test_server_refusing_the_clip_size_names_the_setting_to_raise(clips: list[str], message: str, advice: str) -> None:
    with OpenAIStubServer(lambda request: StubReply(status=400, content=message)) as server:
        outputs = caption_all(captioner_for(server, max_retries=2), clips[:1])
    assert outputs[0].error == f"HTTP 400 after 1 attempt: {message}; {advice}"
    assert len(server.requests) == 1


def test_retry_after_header_forms() -> None:
    in_ten_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    # Lower-case keys, as the client's case-insensitive headers answer them.
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert 8 < retry_after_s({"retry-after": in_ten_seconds}) <= 10
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


# --------------------------------------------------------------------------- identity and arguments


def test_model_hash_names_the_model_not_the_server() -> None:
    here = OpenAIVlmCaptioner(["http://gpu-a:8000/v1"], MODEL)
    there = OpenAIVlmCaptioner(["http://gpu-b:9000/v1", "http://gpu-c:9000/v1"], MODEL)
    assert here.model_hash == there.model_hash == remote_model_hash(MODEL, "", "video")
    # Pinned: a change re-captions everything (the family left out for Qwen2.5-VL keeps these).
    assert remote_model_hash(MODEL, "", "frames") == "openai-vlm:" + "6f097a85f9bb02d3"
    assert remote_model_hash(MODEL, "", "frames", "qwen2_5_vl") == remote_model_hash(MODEL, "", "frames")
    assert here.model_path == MODEL
    variants = {
        here.model_hash,
        OpenAIVlmCaptioner(["http://gpu-a:8000/v1"], "my-org/cosmos-sft").model_hash,
        OpenAIVlmCaptioner(["http://gpu-a:8000/v1"], MODEL, model_revision="sft-2").model_hash,
        OpenAIVlmCaptioner(["http://gpu-a:8000/v1"], MODEL, video_transport="frames").model_hash,
        OpenAIVlmCaptioner(["http://gpu-a:8000/v1"], MODEL, family="qwen3_vl").model_hash,
    }
    assert len(variants) == 5


@pytest.mark.parametrize(
    "options",
    [
        {"base_urls": []},
        {"max_in_flight": 0},
        {"max_retries": -1},
        {"video_transport": "mp4"},
        {"family": "llava"},
        {"server_max_frames": 0},
    ],
)
def test_bad_arguments_are_refused(options: dict[str, Any]) -> None:
    arguments = {"base_urls": ["http://gpu-a:8000/v1"], "model": MODEL} | options
    with pytest.raises(ValueError):
        OpenAIVlmCaptioner(**arguments)


def test_resource_defaults_to_the_video_form_and_passes_family_and_limit_through() -> None:
    default = OpenAIVlmCaptionerResource(model=MODEL, base_urls=["http://gpu-a:8000/v1"]).captioner(MODEL, None)
    assert (default.video_transport, default.family.name, default.server_max_frames) == ("video", "qwen2_5_vl", None)
    resource = OpenAIVlmCaptionerResource(
        model="nvidia/Cosmos-Reason2-8B",
        base_urls=["http://gpu-a:8000/v1"],
        family="qwen3_vl",
        video_transport="frames",
        server_max_frames=768,
    )
    served = resource.captioner("nvidia/Cosmos-Reason2-8B", None)
    assert (served.video_transport, served.family, served.server_max_frames) == ("frames", QWEN3_VL, 768)
