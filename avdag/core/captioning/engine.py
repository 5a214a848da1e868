"""The local captioning engine: batched `generate`, decoding overlapped with generation, one worker per device.

The recipe captions one clip per `generate` call and decodes every frame before sampling. Here
several clips share one `generate` (left padding, so every prompt ends where generation starts),
the frames of the next generate group are sampled on a helper thread while the current batch generates,
and each device (GPU) runs its own copy of the model over a shared queue of generate_groups.

Batching does not change greedy answers (a test checks batched == one-at-a-time), so clips per generate
and devices are not part of a caption's identity; generation settings are.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from avdag.core.captioning.answers import answer_is_complete
from avdag.core.captioning.conversations import caption_messages
from avdag.core.captioning.model import (
    CaptionOutput,
    GenerationSettings,
    load_model_and_processor,
    resolve_device,
    sample_for,
    video_kwargs,
)
from avdag.core.captioning.model_family import ModelFamily
from avdag.core.common.model_identity import model_fingerprint
from avdag.core.ingest.video import SampledVideo, VideoError


@dataclass(frozen=True)
class PreparedClip:
    """One clip ready for the processor: its sampled frames and chat text, or why it is not."""

    index: int
    path: str
    text: str = ""
    video: SampledVideo | None = None
    error: str | None = None
    seconds: float = 0.0


GPU_CLIPS_PER_GENERATE = 8


def default_clips_per_generate(device: str) -> int:
    """8 on a GPU, where a decoding step costs about the same for 8 rows as for 1; 1 on a CPU, where
    each row costs its full share and padding to the batch's longest clip is pure loss (measured
    by the captioning benchmark's `--batch-row 8`)."""
    return GPU_CLIPS_PER_GENERATE if device.startswith("cuda") else 1


class VlmCaptioner:
    """Answers the rubric for many clips with a Qwen2.5-VL or Qwen3-VL model (see `model_family`).

    `clips_per_generate` clips share one `generate` (default: `default_clips_per_generate` of the device);
    `devices` lists where model copies run (e.g. ["cuda:0", "cuda:1"]); "auto" means one copy on
    cuda:0 if present, else the CPU. `recorded_as` is what captions name as their model when
    `model_path` is a node-local copy (the state-store URL of a fetched checkpoint). `expected_family`
    refuses a checkpoint of another family (e.g. a fine-tune of the other base) before it is loaded.
    """

    def __init__(
        self,
        model_path: str,
        *,
        recorded_as: str | None = None,
        device: str = "auto",
        settings: GenerationSettings = GenerationSettings(),
        clips_per_generate: int | None = None,
        devices: Sequence[str] | None = None,
        expected_family: ModelFamily | None = None,
    ):
        self.model_path = recorded_as or str(model_path)
        self.expected_family = expected_family
        self.local_path = str(model_path)
        self.settings = settings
        self.devices = [resolve_device(d) for d in (devices or [device])]
        self.clips_per_generate = clips_per_generate or default_clips_per_generate(self.devices[0])
        if self.clips_per_generate < 1:
            raise ValueError(f"clips_per_generate must be >= 1, got {clips_per_generate}")
        self._models: dict[int, tuple] = {}
        self._load_lock = threading.Lock()

    @cached_property
    def model_hash(self) -> str:
        return model_fingerprint(self.local_path)

    def caption(self, video_path: str | Path, system_prompt: str, user_prompt: str) -> CaptionOutput:
        """One clip; raises if it could not be captioned (batch callers use `caption_stream`)."""
        [(_, out)] = list(self.caption_stream([str(video_path)], system_prompt, user_prompt))
        if out.error:
            raise RuntimeError(out.error)
        return out

    def caption_stream(
        self, video_paths: Sequence[str], system_prompt: str, user_prompt: str
    ) -> Iterator[tuple[int, CaptionOutput]]:
        """Yield (index, output) per clip as generate_groups finish; a bad clip yields an error, the rest go on."""
        generate_groups = [
            list(range(i, min(i + self.clips_per_generate, len(video_paths))))
            for i in range(0, len(video_paths), self.clips_per_generate)
        ]
        if not generate_groups:
            return
        results: queue.Queue = queue.Queue()
        stop = threading.Event()
        next_group = iter(generate_groups)
        take_lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=len(self.devices), thread_name_prefix="avdag-frames") as frames_pool:

            def take() -> Future | None:
                with take_lock:
                    batch = None if stop.is_set() else next(next_group, None)
                if batch is None:
                    return None
                return frames_pool.submit(
                    self._prepare, [(i, str(video_paths[i])) for i in batch], system_prompt, user_prompt
                )

            def run_groups(slot: int) -> Iterator[tuple[int, CaptionOutput]]:
                upcoming = take()
                while upcoming is not None:
                    prepared = upcoming.result()
                    upcoming = take()  # sample the next batch's frames while this one generates
                    yield from self._generate(slot, prepared)

            if len(self.devices) == 1:
                # One device: generate on the calling thread. torch's intra-op (OpenMP) pool belongs to
                # the thread that uses it; a worker thread would spin up and wake a pool of its own.
                yield from run_groups(0)
                return

            def work(slot: int) -> None:
                try:
                    for item in run_groups(slot):
                        results.put(item)
                except BaseException as error:  # a worker that cannot run (e.g. model load) stops the stream
                    results.put(error)

            workers = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(len(self.devices))]
            for worker in workers:
                worker.start()
            try:
                for _ in range(len(video_paths)):
                    item = results.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                stop.set()
                for worker in workers:
                    worker.join()

    def _model(self, slot: int):
        with self._load_lock:
            if slot not in self._models:
                model, processor = load_model_and_processor(self.local_path, self.devices[slot], self.expected_family)
                processor.tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
                self._models[slot] = (model.eval(), processor)
            return self._models[slot]

    def _prepare(self, batch: list[tuple[int, str]], system_prompt: str, user_prompt: str) -> list[PreparedClip]:
        """Sample frames and render the chat text for each clip of a batch (runs on the frames thread)."""
        import torch

        # One torch thread here (thread-local): a second intra-op pool spinning beside generate's
        # halves generation speed on a small CPU; the decoder has FFmpeg's own threads.
        torch.set_num_threads(1)
        _, processor = self._model(0)
        s = self.settings
        prepared = []
        for index, path in batch:
            start = time.perf_counter()
            messages = caption_messages(system_prompt, user_prompt, path, fps=s.fps, max_pixels=s.max_pixels)
            try:
                video = sample_for(processor, path, fps=s.fps, max_pixels=s.max_pixels)
            except (VideoError, OSError) as error:
                prepared.append(PreparedClip(index, path, error=f"{path}: {error}"))
                continue
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prepared.append(PreparedClip(index, path, text, video, seconds=time.perf_counter() - start))
        return prepared

    def _generate(self, slot: int, prepared: list[PreparedClip]) -> list[tuple[int, CaptionOutput]]:
        """One `generate` for the batch's decodable clips; a failing batch reports each clip's error."""
        failed = [(c.index, CaptionOutput("", 0, 0, 0, c.seconds, error=c.error)) for c in prepared if c.error]
        ready = [c for c in prepared if not c.error]
        if not ready:
            return failed
        start = time.perf_counter()
        try:
            texts = self._generate_batch(slot, ready)
        except (RuntimeError, ValueError) as error:  # e.g. out of memory: these clips fail, the run goes on
            return failed + [
                (c.index, CaptionOutput("", 0, 0, 0, 0.0, error=f"generate failed: {error}")) for c in ready
            ]
        share = (time.perf_counter() - start) / len(ready)
        return failed + [
            (c.index, CaptionOutput(text, prompt, video, new, c.seconds + share))
            for c, (text, prompt, video, new) in zip(ready, texts)
        ]

    def _generate_batch(self, slot: int, ready: list[PreparedClip]) -> list[tuple[str, int, int, int]]:
        import torch

        model, processor = self._model(slot)
        inputs = processor(
            text=[c.text for c in ready],
            **video_kwargs(processor, [c.video for c in ready]),
            padding=True,
            return_tensors="pt",
        ).to(model.device)
        padded_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = model.generate(**inputs, **self._generate_kwargs(processor, padded_len))
        tokenizer = processor.tokenizer
        stop_ids = _stop_token_ids(model, tokenizer)
        rows = []
        for row in range(len(ready)):
            mask = inputs["attention_mask"][row].bool()
            prompt_ids = inputs["input_ids"][row][mask]
            new_ids = _reply_tokens(out[row, padded_len:].tolist(), stop_ids, tokenizer.pad_token_id)
            rows.append(
                (
                    tokenizer.decode(new_ids, skip_special_tokens=True),
                    int(prompt_ids.numel()),
                    int((prompt_ids == model.config.video_token_id).sum()),
                    len(new_ids),
                )
            )
        return rows

    def _generate_kwargs(self, processor, padded_len: int) -> dict:
        s = self.settings
        kwargs: dict = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty)
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop_at_json_end:
            kwargs["stopping_criteria"] = [JsonAnswerComplete(processor.tokenizer, padded_len)]
        return kwargs


def _stop_token_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | {tokenizer.convert_tokens_to_ids("<|im_end|>")}


def _reply_tokens(ids: list[int], stop_ids: set[int], pad_id: int | None) -> list[int]:
    """The tokens the model produced for one row: through its first stop token, or up to the padding
    `generate` appends once a row is finished (the same count whether the row ran alone or in a batch)."""
    for position, token in enumerate(ids):
        if token in stop_ids and token != pad_id:
            return ids[: position + 1]
        if token == pad_id:
            return ids[:position]
    return ids


class JsonAnswerComplete:
    """Marks each row done once its reply holds a whole JSON object (checked every few tokens)."""

    def __init__(self, tokenizer, prompt_len: int, every: int = 8):
        self.tokenizer, self.prompt_len, self.every = tokenizer, prompt_len, every

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids.shape[1] - self.prompt_len
        if new == 0 or new % self.every:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor([answer_is_complete(t) for t in texts], dtype=torch.bool, device=input_ids.device)
