"""Caption clips with any OpenAI-compatible vision-language server, many requests in flight.

For scale: one vLLM (or NIM) server per GPU or node serving e.g. `nvidia/Cosmos-Reason1-7B`, and
an `OpenAIVlmCaptioner` spreading clips over their base URLs, a bounded number in flight on each.

The clip travels as the frames avdag's own sampler picks (recipe fps and max_pixels, qwen-vl-utils
rounding), so the server sees the frames the local captioner and the SFT data see. Each frame is a
JPEG at quality 95: under one grey level of mean error (0.95 on the sample clip, 27 KB a frame),
the noise the project already tolerates between two FFmpeg builds; PNG would be exact but about
4x larger, and vLLM's multi-frame video form only takes JPEG.

What this relies on in vLLM's OpenAI-compatible server (other servers ignore or reject the extras):
* `repetition_penalty`, `mm_processor_kwargs` and `media_io_kwargs` are request fields
  (vllm/entrypoints/openai/protocol.py); the openai client sends them through `extra_body`.
* A request that omits a sampling parameter gets the model's generation_config.json value (vLLM
  loads it by default, PR #15281), so repetition_penalty is always sent; top_k and min_p are not
  settings here, so start vLLM with `--generation-config vllm` to keep them neutral.
* `data:video/jpeg;base64,<frame>,<frame>,...` is one video made of JPEG frames
  (vllm/multimodal/media/video.py, `VideoMediaIO.load_base64`).
* vLLM caps images per prompt (`--limit-mm-per-prompt`); the "frames" transport needs at least the
  clip's frame count (e.g. '{"image": 64}').
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import openai
from PIL import Image

from avdag.core.captioning.conversations import Message, caption_messages
from avdag.core.captioning.model import CaptionOutput, GenerationSettings
from avdag.core.common.http_retry import failure_text, is_retryable, wait_before_retry
from avdag.core.ingest.video import FRAME_FACTOR, IMAGE_FACTOR, SampledVideo, VideoError, sample_frames

if TYPE_CHECKING:
    import torch

VideoTransport = Literal["frames", "video"]
VIDEO_TRANSPORTS: tuple[VideoTransport, ...] = ("frames", "video")
FRAME_JPEG_QUALITY = 95


def remote_model_hash(model: str, model_revision: str, video_transport: VideoTransport) -> str:
    """Caption-cache identity of a served model: what it is and what it is shown, not where it runs.

    The base URL is left out, so moving a server keeps its captions; the transport and the frame
    encoding are in, because they change the model's input. The server cannot tell us when its
    weights change, so `model_revision` must be bumped by hand then.
    """
    payload = json.dumps(["openai-vlm", model, model_revision, video_transport, f"jpeg-q{FRAME_JPEG_QUALITY}"])
    return "openai-vlm:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


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
    """The clip as OpenAI content parts: one image per frame, or one vLLM video of JPEG frames."""
    if transport == "frames":
        return [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{frame}"}} for frame in frames_base64
        ]
    return [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames_base64)}}]


def video_request_fields(sampled: SampledVideo, transport: VideoTransport) -> dict[str, Any]:
    """vLLM fields that make N JPEG frames one video at the sampled frame rate.

    `mm_processor_kwargs.fps` is what Qwen2.5-VL's processor turns into the video's time positions
    (second_per_grid_ts = 2 / fps), as the local captioner passes it. `media_io_kwargs` describes
    the frames as the whole video, and num_frames -1 stops newer vLLM from keeping only the first
    32 frames of a `video/jpeg` URL.
    """
    if transport == "frames":
        return {}
    return {
        "mm_processor_kwargs": {"fps": sampled.sample_fps},
        "media_io_kwargs": {"video": {"num_frames": -1, "fps": sampled.sample_fps}},
    }


def qwen_visual_tokens(sampled: SampledVideo, transport: VideoTransport) -> int:
    """Visual tokens a Qwen2.5-VL server spends on the clip (the frames are already at a size it keeps).

    28x28 pixels make one token; a video merges frames in pairs, while each image stands alone.
    """
    frame_count, _, height, width = sampled.frames.shape
    tokens_per_frame = (height // IMAGE_FACTOR) * (width // IMAGE_FACTOR)
    temporal_groups = frame_count if transport == "frames" else -(-frame_count // FRAME_FACTOR)
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


# --------------------------------------------------------------------------- retries


class NoAnswer(Exception):
    """The server gave no answer for a clip: an error after every allowed attempt, or an empty reply."""


# --------------------------------------------------------------------------- the captioner


class OpenAIVlmCaptioner:
    """Answers the rubric for clips through OpenAI-compatible chat servers, many clips at once.

    Each endpoint gets `max_in_flight` worker threads; all workers take the next clip from one
    shared queue, so a faster server simply takes more clips. A worker samples and encodes its
    clip, then waits on the network, so decoding overlaps other workers' requests (and while a
    worker decodes, its endpoint has one request fewer in flight).

    `video_transport`:
    * "frames" (default, portable): one `image_url` part per frame; every OpenAI-compatible VLM
      server takes it. Qwen2.5-VL then sees N still images: twice the visual tokens of a video
      (each image fills a two-frame temporal patch on its own) and no time axis between them, so
      answers can differ from the same model shown the clip as a video.
    * "video" (vLLM only): one `video_url` of JPEG frames at the sampled fps, which is how the
      recipe trains and the local captioner asks. Prefer it for a fine-tuned Qwen2.5-VL on vLLM;
      its request fields follow vLLM's source (see the module notes), not a run against a live server.

    Not applied remotely: `settings.stop_at_json_end` (the server stops at end-of-sequence or
    max_tokens). `video_tokens` is `qwen_visual_tokens`, exact for Qwen2.5-VL servers only;
    `prompt_tokens` and `new_tokens` are the server's `usage` (0 when it sends none).
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str = "EMPTY",
        settings: GenerationSettings = GenerationSettings(),
        max_in_flight: int = 8,
        timeout_s: float = 300.0,
        max_retries: int = 2,
        model_revision: str = "",
        video_transport: VideoTransport = "frames",
    ) -> None:
        if not base_urls:
            raise ValueError("base_urls is empty: give at least one server")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if video_transport not in VIDEO_TRANSPORTS:
            raise ValueError(f"video_transport must be one of {VIDEO_TRANSPORTS}, got {video_transport!r}")
        self.base_urls = list(base_urls)
        self.model_path = model
        self.model_hash = remote_model_hash(model, model_revision, video_transport)
        self.settings = settings
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.video_transport = video_transport
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
        sampled = sample_frames(video_path, fps=s.fps, max_pixels=s.max_pixels)
        video_parts = video_content_parts(jpeg_base64_frames(sampled.frames), self.video_transport)
        conversation = caption_messages(system_prompt, user_prompt, str(video_path), fps=s.fps, max_pixels=s.max_pixels)
        messages = openai_messages(conversation, video_parts)
        started = time.perf_counter()
        response = self._create_with_retries(client, messages, video_request_fields(sampled, self.video_transport))
        seconds = time.perf_counter() - started
        choice = response.choices[0]
        if not choice.message.content:
            raise NoAnswer(f"empty reply from {client.base_url} (finish_reason={choice.finish_reason})")
        usage = response.usage
        return CaptionOutput(
            raw_text=choice.message.content,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            video_tokens=qwen_visual_tokens(sampled, self.video_transport),
            new_tokens=usage.completion_tokens if usage else 0,
            seconds=seconds,
        )

    def _create_with_retries(self, client, messages, video_fields: dict[str, Any]):
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
                    raise NoAnswer(failure_text(error, attempt)) from error
                time.sleep(wait_before_retry(error, attempt))
                attempt += 1
