"""Caption clips with any OpenAI-compatible vision-language server, many requests in flight.

For scale: one vLLM (or NIM) server per GPU or node serving e.g. `nvidia/Cosmos-Reason1-7B`, and
an `OpenAIVlmCaptioner` spreading clips over their base URLs, a bounded number in flight on each.

The clip travels as the frames avdag's own sampler picks (recipe fps and max_pixels, qwen-vl-utils
rounding, the family's patch size), so the server sees the frames the local captioner and the SFT
data see. Each frame is a JPEG at quality 95: under one grey level of mean error (0.95 on the sample
clip, 27 KB a frame), the noise the project already tolerates between two FFmpeg builds; PNG would
be exact but about 4x larger, and vLLM's pre-sampled video form only takes JPEG. Re-encoding the
frames as an mp4 would add H.264 loss and let the server sample again (its own frame count), so the
frames go as they are.

What this relies on in vLLM's OpenAI-compatible server (other servers ignore or reject the extras):
* `repetition_penalty`, `mm_processor_kwargs` and `media_io_kwargs` are request fields
  (vllm/entrypoints/openai/protocol.py; per-request `media_io_kwargs` since PR #34778); the openai
  client sends them through `extra_body`.
* A request that omits a sampling parameter gets the model's generation_config.json value (vLLM
  loads it by default, PR #15281), so repetition_penalty is always sent; top_k and min_p are not
  settings here, so start vLLM with `--generation-config vllm` to keep them neutral.
* `data:video/jpeg;base64,<frame>,<frame>,...` is one video of exactly those frames, not sampled
  again (vllm/multimodal/media/video.py, `VideoMediaIO.load_base64`): `media_io_kwargs.video`
  `num_frames` -1 keeps every frame (a positive server default keeps only the first N), `fps` is the
  video metadata's frame rate, and since PR #40133 `frames_indices`, `total_num_frames` and
  `duration` describe where the frames came from in the source.
* Qwen2.5-VL's time positions come from `mm_processor_kwargs.fps` (second_per_grid_ts = 2 / fps in
  its HF processor, vllm/model_executor/models/qwen2_5_vl.py), so that is the sampled fps.
* Qwen3-VL writes a `<t seconds>` marker before each temporal patch, t = frames_indices / metadata
  fps averaged over the patch's two frames (`Qwen3VLProcessingInfo._get_video_second_idx` in
  vllm/model_executor/models/qwen3_vl.py): so the source fps and the source indices, as
  qwen-vl-utils gives them. A vLLM older than PR #40133 ignores those and would time the frames at
  the source fps as if consecutive: serve Qwen3-VL with a newer one.
* vLLM refuses a prompt with more items than `--limit-mm-per-prompt` allows ("At most N image(s)
  ..."), a video longer than the encoder cache it profiled for, or a prompt over `--max-model-len`,
  each with a 400. `refusal_advice` turns those into the flag and value that would admit the clip.
* A reasoning parser (`--reasoning-parser`) moves the thinking to `reasoning_content` (`reasoning`
  in newer vLLM); when the model never closes its `<think>`, the answer is there and `content` is
  empty. `reply_text` reads either and says which.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import openai
from PIL import Image

from avdag.core.captioning.conversations import Message, caption_messages
from avdag.core.captioning.model import CaptionOutput, GenerationSettings
from avdag.core.captioning.model_family import QWEN2_5_VL, ModelFamily, family_by_name
from avdag.core.common.http_retry import failure_text, is_retryable, wait_before_retry
from avdag.core.ingest.video import DEFAULT_MAX_FRAMES, SampledVideo, VideoError, sample_frames

if TYPE_CHECKING:
    import torch

VideoTransport = Literal["video", "frames"]
VIDEO_TRANSPORTS: tuple[VideoTransport, ...] = ("video", "frames")
FRAME_JPEG_QUALITY = 95
# Where a served model's answer was read from: the message content, or a reasoning parser's field.
AnswerField = Literal["content", "reasoning_content", "reasoning"]
REASONING_FIELDS: tuple[AnswerField, ...] = ("reasoning_content", "reasoning")


def remote_model_hash(
    model: str, model_revision: str, video_transport: VideoTransport, family: str = QWEN2_5_VL.name
) -> str:
    """Caption-cache identity of a served model: what it is and what it is shown, not where it runs.

    The base URL is left out, so moving a server keeps its captions; the transport, the frame
    encoding and the family (which decides frame sizes and the video metadata sent) are in, because
    they change the model's input. The default family adds nothing, so hashes made before it existed
    still hold. The server cannot tell us when its weights change, so `model_revision` must be
    bumped by hand then.
    """
    parts: list[str] = ["openai-vlm", model, model_revision, video_transport, f"jpeg-q{FRAME_JPEG_QUALITY}"]
    if family != QWEN2_5_VL.name:
        parts.append(family)
    return "openai-vlm:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- frames on the wire


def jpeg_base64_frames(frames: torch.Tensor) -> list[str]:
    """Base64 JPEGs of sampled frames (float T x 3 x H x W holding whole values 0..255)."""
    import torch

    pixels = frames.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return [_jpeg_base64(frame) for frame in pixels]


def _jpeg_base64(rgb) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=FRAME_JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def video_content_parts(frames_base64: list[str], transport: VideoTransport) -> list[dict[str, Any]]:
    """The clip as OpenAI content parts: one vLLM video of JPEG frames, or one image per frame."""
    if transport == "frames":
        return [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{frame}"}} for frame in frames_base64
        ]
    return [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames_base64)}}]


def video_request_fields(sampled: SampledVideo, transport: VideoTransport, family: ModelFamily = QWEN2_5_VL) -> dict:
    """vLLM fields that make N JPEG frames one video with the timing the family's processor reads.

    Qwen2.5-VL: `mm_processor_kwargs.fps` is the sampled fps (its time positions, as the local
    captioner passes it) and the video's metadata fps agrees. Qwen3-VL: the metadata is the
    source's, as qwen-vl-utils gives it (fps, the sampled frame indices, the frame count), because
    its frame timestamps are index / fps; `mm_processor_kwargs` is left out so nothing asks its
    processor to sample again. `num_frames` -1 keeps every frame in both.
    """
    if transport == "frames":
        return {}
    if family.needs_video_metadata:
        video = {
            "num_frames": -1,
            "fps": sampled.video_fps,
            "frames_indices": list(sampled.frame_indices),
            "total_num_frames": sampled.total_frames,
            "duration": sampled.total_frames / sampled.video_fps,
            "do_sample_frames": False,
        }
        return {"media_io_kwargs": {"video": video}}
    return {
        "mm_processor_kwargs": {"fps": sampled.sample_fps},
        "media_io_kwargs": {"video": {"num_frames": -1, "fps": sampled.sample_fps}},
    }


def qwen_visual_tokens(sampled: SampledVideo, transport: VideoTransport, family: ModelFamily = QWEN2_5_VL) -> int:
    """Visual tokens a Qwen-VL server spends on the clip (the frames are already at a size it keeps).

    One merged token covers factor x factor pixels; a video merges frames in pairs (a temporal
    patch), while each image fills a temporal patch on its own: twice the tokens.
    """
    frame_count, _, height, width = sampled.frames.shape
    factor = family.frame_factor
    tokens_per_frame = (height // factor) * (width // factor)
    patch = family.temporal_patch_size
    temporal_groups = frame_count if transport == "frames" else -(-frame_count // patch)
    return temporal_groups * tokens_per_frame


def openai_messages(messages: list[Message], video_parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`caption_messages`' conversation with its video element replaced by the encoded frames."""
    return [
        {"role": message["role"], "content": _openai_content(message["content"], video_parts)} for message in messages
    ]


def _openai_content(content: str | list[dict[str, Any]], video_parts: list[dict[str, Any]]):
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "video":
            parts.extend(video_parts)
        elif part["type"] == "text":
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise ValueError(f"no OpenAI form for a {part['type']!r} content part")
    return parts


# --------------------------------------------------------------------------- what the server will take


def serve_flag(transport: VideoTransport, frames: int) -> str:
    """The vLLM startup flag that admits a clip of `frames` frames sent with `transport`."""
    if transport == "frames":
        return f"--limit-mm-per-prompt '{{\"image\": {frames}}}'"
    return f'--limit-mm-per-prompt \'{{"video": {{"count": 1, "num_frames": {frames}}}}}\''


def over_limit_text(frames: int, limit: int, transport: VideoTransport) -> str:
    """Why a clip is not sent to servers configured for at most `limit` frames, and what to raise."""
    what = "images per prompt" if transport == "frames" else "frames per video"
    longest = f"; the longest clip avdag samples has {DEFAULT_MAX_FRAMES}" if frames < DEFAULT_MAX_FRAMES else ""
    return (
        f"clip has {frames} frames but the servers take at most {limit} {what} (server_max_frames): "
        f"start vLLM with {serve_flag(transport, frames)}{longest}, then raise server_max_frames to match"
    )


_COUNT_REFUSAL = re.compile(r"At most (\d+) (\w+)\(s\) may be provided in one prompt")
_ENCODER_REFUSAL = re.compile(
    r"a\(n\) (\w+) item with (?:length )?(\d+)(?: embedding tokens)?, which exceeds the pre-allocated encoder cache"
)
_LENGTH_REFUSAL = re.compile(r"prompt \(length (\d+)\) is longer than the maximum model length of (\d+)")


def refusal_advice(message: str, transport: VideoTransport, frames: int, max_tokens: int) -> str | None:
    """The startup flag and value that would admit the clip, for a 400 in which vLLM refused its size."""
    if _COUNT_REFUSAL.search(message) or _ENCODER_REFUSAL.search(message):
        return f"the clip has {frames} frames: start vLLM with {serve_flag(transport, frames)}"
    if match := _LENGTH_REFUSAL.search(message):
        needed = int(match.group(1)) + max_tokens
        advice = f"start vLLM with --max-model-len {needed} (prompt {match.group(1)} + max_tokens {max_tokens})"
        return advice + (" or send the clip as one video (video_transport='video')" if transport == "frames" else "")
    return None


# --------------------------------------------------------------------------- replies


class NoAnswer(Exception):
    """The server gave no answer for a clip: an error after every allowed attempt, or an empty reply."""


def reply_text(message) -> tuple[str, AnswerField] | None:
    """The answer in a chat message and the field it came from; None when there is none.

    With a reasoning parser the thinking sits in `reasoning_content`/`reasoning` beside the answer;
    it is put back as the `<think>` section the raw reply would have had, so the raw text is what
    a server without the parser returns and `parse_answer` leaves the thinking out of the JSON.
    When `content` is empty the answer is in the reasoning field itself (the model never closed its
    `<think>`), so that text is the answer, less a dangling opening tag.
    """
    extra = getattr(message, "model_extra", None) or {}
    field, reasoning = next(
        ((name, extra[name]) for name in REASONING_FIELDS if isinstance(extra.get(name), str) and extra[name].strip()),
        (None, ""),
    )
    content = message.content or ""
    if content.strip():
        return (f"<think>\n{reasoning.strip()}\n</think>\n\n{content}" if field else content), "content"
    if field is None:
        return None
    text = reasoning.strip()
    return (text.removeprefix("<think>").lstrip() if "</think>" not in text else text), field


@dataclass(frozen=True)
class ServedCaptionOutput(CaptionOutput):
    """A served clip's answer, and which message field held it (its provenance under a reasoning parser)."""

    answer_field: AnswerField = "content"


# --------------------------------------------------------------------------- the captioner


class OpenAIVlmCaptioner:
    """Answers the rubric for clips through OpenAI-compatible chat servers, many clips at once.

    Each endpoint gets `max_in_flight` worker threads; all workers take the next clip from one
    shared queue, so a faster server simply takes more clips. A worker samples and encodes its
    clip, then waits on the network, so decoding overlaps other workers' requests (and while a
    worker decodes, its endpoint has one request fewer in flight).

    `video_transport`:
    * "video" (default; vLLM): one `video_url` of the sampled JPEG frames with their timing (see
      `video_request_fields`), which is how the recipe trains and the local captioner asks: temporal
      patches of two frames and time positions (Qwen2.5-VL) or timestamps (Qwen3-VL). Serve with
      `--limit-mm-per-prompt '{"video": 1}'` or the dict form that also profiles the frame count.
    * "frames" (any OpenAI-compatible VLM server): one `image_url` part per frame. It costs about
      twice the visual tokens (each image fills a two-frame temporal patch alone) and the model sees
      N stills with no time between them: not the input a fine-tuned model learned from, so answers
      can differ. The server must admit a clip's frame count as images (up to 768 for 600 s clips).

    `family` ("qwen2_5_vl" or "qwen3_vl", as `model_family`) sets the frame geometry and the video
    metadata sent. `server_max_frames`: the most frames the servers were started for (their
    `--limit-mm-per-prompt`: images per prompt for "frames", the video's num_frames for "video");
    a longer clip fails with the flag and value that would admit it, without a request. A 400 in
    which vLLM refuses a clip's size is reported the same way, and neither is retried.

    Not applied remotely: `settings.stop_at_json_end` (the server stops at end-of-sequence or
    max_tokens). `video_tokens` is `qwen_visual_tokens`; `prompt_tokens` and `new_tokens` are the
    server's `usage` (0 when it sends none). Outputs are `ServedCaptionOutput`s naming the field
    the answer came from.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str = "EMPTY",
        settings: GenerationSettings | None = None,
        max_in_flight: int = 8,
        timeout_s: float = 300.0,
        max_retries: int = 2,
        model_revision: str = "",
        video_transport: VideoTransport = "video",
        family: str = QWEN2_5_VL.name,
        server_max_frames: int | None = None,
    ) -> None:
        if not base_urls:
            raise ValueError("base_urls is empty: give at least one server")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if video_transport not in VIDEO_TRANSPORTS:
            raise ValueError(f"video_transport must be one of {VIDEO_TRANSPORTS}, got {video_transport!r}")
        if server_max_frames is not None and server_max_frames < 1:
            raise ValueError(f"server_max_frames must be >= 1 or None, got {server_max_frames}")
        self.family = family_by_name(family)
        self.base_urls = list(base_urls)
        self.model_path = model
        self.model_hash = remote_model_hash(model, model_revision, video_transport, self.family.name)
        # The per-frame pixel budget is the family's own (16 x 9 merged tokens of 28 or 32 pixels).
        self.settings = settings or GenerationSettings(max_pixels=self.family.max_pixels)
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.video_transport = video_transport
        self.server_max_frames = server_max_frames
        # Retries are ours (max_retries=0 here), so every error can say how many attempts it took.
        self._clients = [
            openai.OpenAI(api_key=api_key, base_url=url, timeout=timeout_s, max_retries=0) for url in self.base_urls
        ]

    def caption_stream(
        self, video_paths: Sequence[str], system_prompt: str, user_prompt: str
    ) -> Iterator[tuple[int, CaptionOutput]]:
        """(index, output) as each clip finishes; closing the stream early lets in-flight clips end."""
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(video_paths)):
            pending.put(index)
        finished: queue.SimpleQueue[tuple[int, CaptionOutput]] = queue.SimpleQueue()
        stop = threading.Event()
        # Interleaved, so the first workers to start already cover every endpoint.
        slots = [client for _ in range(self.max_in_flight) for client in self._clients]
        with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="openai-vlm") as pool:
            for client in slots:
                pool.submit(self._work, client, video_paths, pending, finished, stop, system_prompt, user_prompt)
            try:
                for _ in range(len(video_paths)):
                    yield finished.get()
            finally:
                stop.set()

    def _work(self, client, video_paths, pending, finished, stop, system_prompt, user_prompt) -> None:
        while not stop.is_set():
            try:
                index = pending.get_nowait()
            except queue.Empty:
                return
            finished.put((index, self._caption_or_error(client, video_paths[index], system_prompt, user_prompt)))

    def _caption_or_error(self, client, video_path: str, system_prompt: str, user_prompt: str) -> CaptionOutput:
        """Never raises: a clip that cannot be captioned becomes an output with `error` set."""
        started = time.perf_counter()
        try:
            return self._caption(client, video_path, system_prompt, user_prompt)
        except (VideoError, NoAnswer) as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001 - one bad clip must not stop the batch
            message = f"{type(error).__name__}: {error}"
        return CaptionOutput("", 0, 0, 0, time.perf_counter() - started, error=message)

    def _caption(self, client, video_path: str, system_prompt: str, user_prompt: str) -> CaptionOutput:
        s = self.settings
        sampled = sample_frames(
            video_path,
            fps=s.fps,
            max_pixels=s.max_pixels,
            factor=self.family.frame_factor,
            frame_factor=self.family.temporal_patch_size,
        )
        frames = len(sampled.frame_indices)
        if self.server_max_frames is not None and frames > self.server_max_frames:
            raise NoAnswer(f"{video_path}: {over_limit_text(frames, self.server_max_frames, self.video_transport)}")
        video_parts = video_content_parts(jpeg_base64_frames(sampled.frames), self.video_transport)
        conversation = caption_messages(system_prompt, user_prompt, str(video_path), fps=s.fps, max_pixels=s.max_pixels)
        messages = openai_messages(conversation, video_parts)
        started = time.perf_counter()
        fields = video_request_fields(sampled, self.video_transport, self.family)
        response = self._create_with_retries(client, messages, fields, frames)
        seconds = time.perf_counter() - started
        choice = response.choices[0]
        answer = reply_text(choice.message)
        if answer is None:
            raise NoAnswer(f"empty reply from {client.base_url} (finish_reason={choice.finish_reason})")
        usage = response.usage
        return ServedCaptionOutput(
            raw_text=answer[0],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            video_tokens=qwen_visual_tokens(sampled, self.video_transport, self.family),
            new_tokens=usage.completion_tokens if usage else 0,
            seconds=seconds,
            answer_field=answer[1],
        )

    def _create_with_retries(self, client, messages, video_fields: dict[str, Any], frames: int):
        s = self.settings
        attempt = 1
        while True:
            try:
                return client.chat.completions.create(
                    model=self.model_path,
                    messages=messages,
                    max_tokens=s.max_new_tokens,
                    temperature=s.temperature,  # 0 is greedy on vLLM
                    top_p=s.top_p,
                    extra_body={"repetition_penalty": s.repetition_penalty, **video_fields},
                )
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                if not is_retryable(error) or attempt > self.max_retries:
                    text = failure_text(error, attempt)
                    advice = refusal_advice(text, self.video_transport, frames, s.max_new_tokens)
                    raise NoAnswer(f"{text}; {advice}" if advice else text) from error
                time.sleep(wait_before_retry(error, attempt))
                attempt += 1
