"""Benchmark: captioning throughput, the cookbook's caption loop vs avdag's engine, and frame sampling.

    python -m avdag_tests.bench.bench_captioning              # 16 clips (4 real + 12 synthetic)
    python -m avdag_tests.bench.bench_captioning --quick      # 4 clips, short fine-tune, small token caps
    python -m avdag_tests.bench.bench_captioning --work DIR   # keep clips and the fine-tuned model for re-runs
    python -m avdag_tests.bench.bench_captioning --json out.json

Setup (not measured). A work dir (a temp dir unless --work) holds $AVDAG_HOME, the clips and the model.
The clips are byte-unique copies of the real 960x540 dashcam clip (221 frames, 1152 video tokens)
interleaved with synthetic 448x252 clips (40 frames, 576 video tokens). The embedded tiny model is
random: it never closes its JSON, so both loops would only measure their token caps. It is therefore
first fine-tuned (`train_sft` on the clips' own labels, the real clip's once, with the project's
prompts) until it answers in fenced JSON and ends with <|im_end|>. The checkpoint is cached in the
work dir under the training run's fingerprint, so a re-run with --work skips training. Both loops then
caption with this same checkpoint, on the CPU.

Captioning, the same clips in the same process, one loop after the other:
(a) recipe loop, as the cookbook's `avha_caption.py` / `model_reason.py` do it: one clip at a time,
    build the conversation, read the frames the way qwen-vl-utils' torchvision reader does, then
    `processor(text=[...], videos=[...], padding=True)` (no fps passed, as in the recipe) and
    `generate(max_new_tokens=4096, do_sample=True, temperature=0.1, top_p=0.9, repetition_penalty=1.05)`,
    decode. torchvision 0.29 no longer has `io.read_video`, so its PyAV backend is re-done here step by
    step: decode every frame and keep it, convert each to rgb24, stack them into one uint8 tensor; then
    qwen-vl-utils' own `smart_nframes`, `torch.linspace(...).round()` indices, `smart_resize` and the
    bicubic antialiased resize of `fetch_video`. A reply ends at <|im_end|> or at the 4096-token cap.
(b) avdag's engine as it runs by default on this CPU: `VlmCaptioner(...).caption_stream` over all
    clips with batch 1 (greedy, stops as soon as the JSON object closes, frames from `sample_frames`
    on a helper thread while the previous clip generates); (bN) the same engine with batch 8, the GPU
    default, to show what batching does on this machine.
Each loop loads its model and captions one warm-up clip first; neither is timed. Reported per loop:
clips/s, generated tokens/s (every generated token, stop token included, over wall time), mean new
tokens per clip, replies that ran to the cap, replies holding a whole JSON object / parsing at all, and
the mean number of valid rubric fields (of 15). When recipe replies run to the cap, the ratio is also
given against the recipe's rate on the clips where it stopped by itself.

Frame sampling: each decoder, in a fresh subprocess of its own, samples every clip at fps 2 and
max_pixels 16*9*28*28: the recipe-style decode-all reader above, qwen-vl-utils' torchcodec reader
(`fetch_video` with FORCE_QWENVL_VIDEO_READER=torchcodec; what qwen-vl-utils picks when torchcodec is
installed) and avdag's `sample_frames`. Reported: seconds per clip (each clip's best of a few passes),
overall and per clip kind, and peak RSS growth over the post-import baseline. Peak RSS is the child's VmHWM, reset after
its imports, not `ru_maxrss`: a child process starts out with its parent's `ru_maxrss` (it survives fork
and exec), which hides the child's own peak once the parent holds a model. The frames themselves are
compared in this process: same shape, indices and sample fps, and the mean absolute pixel difference.

What limits the ratio. The engine's gain is the tokens it does not generate (greedy + JSON stop, vs
sampling that can run on past the answer, up to the cap) and the frames it does not convert
(decode-all turns all 221 frames of a real clip into RGB). Its tokens/s is about the recipe's: with a
toy model each step is many tiny ops, so per-token cost is framework overhead. Batching does not pay
on a CPU: every row costs its full share, a batch is padded to its longest prompt (the real clips'
1152 video tokens) and runs until its longest reply ends, so (bN) is slower than (b) here; on a GPU a
decoding step costs about the same for 8 rows as for 1, hence the GPU default of 8. Frame sampling
is bounded by decoding: every frame up to the last wanted one must be decoded by both readers
(the real clip has a keyframe every 1.2 s, more than the 0.5 s between sampled frames, so seeking
saves nothing), which
caps the speed-up near x2; the memory saving (only the sampled frames are kept) is the larger win.
Everything here runs torch on all cores, so other busy processes slow every row, and unevenly
(OpenMP waits for descheduled threads); the load average is printed with the results.

Nothing here asserts a timing; numbers are printed (and optionally written as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from avdag.demo.sample_data import REAL_CLIP

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_LABEL = REAL_CLIP.with_name("solidWhiteRight.label.json")
FPS = 2.0
MAX_PIXELS = 16 * 9 * 28 * 28
RECIPE_SAMPLING = {"do_sample": True, "temperature": 0.1, "top_p": 0.9, "repetition_penalty": 1.05}
RECIPE_MAX_NEW_TOKENS = 4096
ENGINE_MAX_NEW_TOKENS = 1024
ENGINE_BATCH = 8
WARMUP_MAX_NEW_TOKENS = 32  # the recipe loop's warm-up clip: enough to run every code path once
GOAL_CLIPS_PER_S = 4.0
GOAL_FRAME_SAMPLING = 2.0
DECODERS = ("recipe_decode_all", "qwen_vl_utils_torchcodec", "avdag_sample_frames")
DECODER_LABELS = {
    "recipe_decode_all": "recipe: decode all (PyAV read_video)",
    "qwen_vl_utils_torchcodec": "qwen-vl-utils torchcodec reader",
    "avdag_sample_frames": "avdag sample_frames",
}


@dataclass(frozen=True)
class Sizes:
    real_copies: int
    synthetic_clips: int
    train_steps: int
    decoder_passes: int = 3
    recipe_max_new_tokens: int = RECIPE_MAX_NEW_TOKENS
    engine_max_new_tokens: int = ENGINE_MAX_NEW_TOKENS
    engine_batch: int = ENGINE_BATCH
    learning_rate: float = 2e-3
    train_batch: int = 2


FULL = Sizes(real_copies=4, synthetic_clips=12, train_steps=150)
QUICK = Sizes(
    real_copies=1,
    synthetic_clips=3,
    train_steps=20,
    decoder_passes=2,
    recipe_max_new_tokens=512,
    engine_max_new_tokens=128,
)


# ----------------------------------------------------------------------------------------------
# Work dir: clips, prompts, the fine-tuned model
# ----------------------------------------------------------------------------------------------


@contextmanager
def avdag_home_in(work: Path) -> Iterator[None]:
    """$AVDAG_HOME inside the work dir for the duration (restored after, for callers such as tests)."""
    saved = os.environ.get("AVDAG_HOME")
    os.environ["AVDAG_HOME"] = str(work / "avdag_home")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AVDAG_HOME", None)
        else:
            os.environ["AVDAG_HOME"] = saved


@dataclass(frozen=True)
class Clip:
    clip_id: str
    path: str
    label: dict
    real: bool


def real_copies(work: Path, n: int) -> list[Clip]:
    """n byte-unique copies of the real clip (new sha256, same frames)."""
    from avdag_tests.support.media import unique_copy

    source = REAL_CLIP.read_bytes()
    label = json.loads(REAL_LABEL.read_text())
    folder = work / "real"
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for k in range(n):
        path = folder / f"real-{k:02d}.mp4"
        data = unique_copy(source, f"avdag-bench-captioning-{k}")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        clips.append(Clip(f"real-{k:02d}", str(path), label, real=True))
    return clips


def synthetic_clips(work: Path, n: int) -> list[Clip]:
    from avdag.core.ingest.landing import LABEL_SUFFIX, VIDEO_SUFFIX
    from avdag.demo.synthetic_clips import generate_sample_batch

    batch = work / "landing" / "bench"
    ids = generate_sample_batch(work / "landing", "bench", n, seed=0)
    return [
        Clip(
            clip_id,
            str(batch / "videos" / f"{clip_id}{VIDEO_SUFFIX}"),
            json.loads((batch / "metas" / f"{clip_id}{LABEL_SUFFIX}").read_text()),
            real=False,
        )
        for clip_id in ids
    ]


def interleave(real: list[Clip], synthetic: list[Clip]) -> list[Clip]:
    """Spread the real copies evenly, so every engine batch holds the same mix of clip sizes."""
    total = len(real) + len(synthetic)
    real_slots = {round(i * total / len(real)) for i in range(len(real))} if real else set()
    real_iter, synthetic_iter = iter(real), iter(synthetic)
    return [next(real_iter) if slot in real_slots else next(synthetic_iter) for slot in range(total)]


def make_clips(work: Path, sizes: Sizes) -> list[Clip]:
    return interleave(real_copies(work, sizes.real_copies), synthetic_clips(work, sizes.synthetic_clips))


def training_examples(clips: Sequence[Clip], prompts) -> list:
    """One example per distinct clip content: every synthetic clip and the real clip once."""
    from avdag.core.captioning.conversations import sft_messages
    from avdag.core.training.embedded_loop import SftExample

    distinct = [c for c in clips if not c.real] + [c for c in clips if c.real][:1]
    return [
        SftExample(
            c.clip_id,
            c.path,
            sft_messages(prompts.system_prompt, prompts.user_prompt, c.path, c.label, fps=FPS, max_pixels=MAX_PIXELS),
        )
        for c in distinct
    ]


def fine_tuned_model(work: Path, clips: Sequence[Clip], prompts, sizes: Sizes, log: Callable[[str], None]) -> dict:
    """The tiny model fine-tuned on the clips' labels, cached in the work dir by its run fingerprint."""
    from avdag.core.training.embedded_loop import SftSettings, run_fingerprint, train_sft
    from avdag.resources.captioner import CaptionerResource
    from avdag.resources.storage import StateStoreResource

    base = CaptionerResource().base_model(StateStoreResource())
    examples = training_examples(clips, prompts)
    settings = SftSettings(
        steps=sizes.train_steps,
        batch_size=sizes.train_batch,
        learning_rate=sizes.learning_rate,
        fps=FPS,
        max_pixels=MAX_PIXELS,
    )
    output = work / "checkpoints" / f"sft-{run_fingerprint(base, settings, examples)}"
    record_path = output / "avdag_training.json"
    cached = record_path.is_file()
    if not cached:
        log(f"fine-tuning the tiny model: {settings.steps} steps x {settings.batch_size} examples ...")

        def progress(event: dict) -> None:
            if event["step"] % 10 == 0 or event["step"] == event["steps"]:
                log(f"  step {event['step']}/{event['steps']} loss {event['loss']:.3f} ({event['elapsed_s']:.0f} s)")

        train_sft(base, examples, output, settings, device="cpu", progress=progress)
    record = json.loads(record_path.read_text())
    losses = [loss for _, loss in record["losses"]]
    return {
        "path": str(output),
        "cached": cached,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "examples": len(examples),
        "train_s": record["seconds"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


# ----------------------------------------------------------------------------------------------
# Frame readers
# ----------------------------------------------------------------------------------------------


def read_video_decode_all(path: str):
    """torchvision.io.read_video's PyAV backend, as qwen-vl-utils called it (whole clip, TCHW uint8).

    Every decoded frame is kept (sorted by pts), then each is converted to rgb24 and the list is
    stacked: the whole clip sits in memory, in YUV and twice in RGB, before any frame is chosen.
    """
    import av
    import numpy as np
    import torch

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = sorted(container.decode(video=0), key=lambda frame: frame.pts)
        video_fps = float(stream.average_rate)
        rgb = [frame.to_rgb().to_ndarray() for frame in frames]
    return torch.as_tensor(np.stack(rgb)).permute(0, 3, 1, 2), video_fps


def recipe_frames(path: str) -> tuple:
    """qwen-vl-utils' `fetch_video` on its torchvision reader: (float frames, sample fps, indices)."""
    import torch
    from qwen_vl_utils import vision_process as qv
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tv_functional

    element = {"type": "video", "video": path, "fps": FPS, "max_pixels": MAX_PIXELS}
    video, video_fps = read_video_decode_all(path)
    total_frames = video.shape[0]
    nframes = qv.smart_nframes(element, total_frames=total_frames, video_fps=video_fps)
    indices = torch.linspace(0, total_frames - 1, nframes).round().long()
    sample_fps = nframes / max(total_frames, 1e-6) * video_fps
    video = video[indices]
    # fetch_video's resize step (Qwen2.5-VL: patch 14, merge 2 -> factor 28)
    factor = 14 * qv.SPATIAL_MERGE_SIZE
    min_pixels = qv.VIDEO_MIN_TOKEN_NUM * factor * factor
    total_pixels = qv.MODEL_SEQ_LEN * factor * factor * 0.9
    max_pixels = max(
        min(qv.VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / nframes * qv.FRAME_FACTOR), int(min_pixels * 1.05)
    )
    height, width = qv.smart_resize(
        video.shape[2],
        video.shape[3],
        factor=factor,
        min_pixels=min_pixels,
        max_pixels=min(element["max_pixels"], max_pixels),
    )
    video = tv_functional.resize(video, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return video.float(), sample_fps, indices.tolist()


def torchcodec_frames(path: str) -> tuple:
    """qwen-vl-utils' `fetch_video`; the torchcodec reader when FORCE_QWENVL_VIDEO_READER=torchcodec."""
    from qwen_vl_utils import fetch_video

    (video, metadata), sample_fps = fetch_video(
        {"type": "video", "video": path, "fps": FPS, "max_pixels": MAX_PIXELS},
        return_video_sample_fps=True,
        return_video_metadata=True,
    )
    if metadata["video_backend"] != "torchcodec":
        raise RuntimeError(f"qwen-vl-utils read {path} with {metadata['video_backend']}, not torchcodec")
    return video, sample_fps, [int(i) for i in metadata["frames_indices"]]


def avdag_frames(path: str) -> tuple:
    from avdag.core.ingest.video import sample_frames

    sampled = sample_frames(path, fps=FPS, max_pixels=MAX_PIXELS)
    return sampled.frames, sampled.sample_fps, sampled.frame_indices


FRAME_READERS: dict[str, Callable[[str], tuple]] = {
    "recipe_decode_all": recipe_frames,
    "qwen_vl_utils_torchcodec": torchcodec_frames,
    "avdag_sample_frames": avdag_frames,
}


# ----------------------------------------------------------------------------------------------
# Frame sampling: one fresh subprocess per decoder
# ----------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Set this process's VmHWM back to its current RSS (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure_decoder_here(name: str, clips: Sequence[str], passes: int) -> dict:
    """Runs inside the decoder's own process: imports, baseline RSS, then `passes` timed passes.

    Peak memory is VmHWM, reset after the imports. Not `ru_maxrss`: a child starts with its parent's
    peak (it is carried across fork and exec), so after the parent has loaded a model it hides the
    child's own peak.
    """
    reader = FRAME_READERS[name]
    import av  # noqa: F401  (every reader's imports, before the baseline)
    import qwen_vl_utils  # noqa: F401
    import torchcodec.decoders  # noqa: F401
    import torchvision  # noqa: F401

    import avdag.core.ingest.video  # noqa: F401

    _reset_peak_rss()
    baseline = _status_kib("VmRSS")
    seconds = []
    for _ in range(passes):
        per_clip = []
        for clip in clips:
            start = time.perf_counter()
            reader(clip)
            per_clip.append(time.perf_counter() - start)
        seconds.append(per_clip)
    return {
        "decoder": name,
        "seconds": seconds,
        "baseline_rss_kib": baseline,
        "peak_rss_growth_kib": _status_kib("VmHWM") - baseline,
    }


def measure_decoder(name: str, clips: Sequence[Clip], passes: int, work: Path) -> dict:
    clip_list = work / "decoder_clips.json"
    clip_list.write_text(json.dumps([c.path for c in clips]))
    env = dict(os.environ, FORCE_QWENVL_VIDEO_READER="torchcodec") if name == "qwen_vl_utils_torchcodec" else None
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "avdag_tests.bench.bench_captioning",
            "--decoder-child",
            name,
            "--clip-list",
            str(clip_list),
            "--passes",
            str(passes),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"decoder {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    best = [min(times) for times in zip(*result["seconds"])]  # per clip, its best pass

    def mean_of(kind: Callable[[Clip], bool]) -> float | None:
        times = [t for t, c in zip(best, clips) if kind(c)]
        return statistics.fmean(times) if times else None

    seconds_per_clip = statistics.fmean(best)
    return {
        **result,
        "seconds_per_clip": seconds_per_clip,
        "clips_per_s": 1 / seconds_per_clip,
        "real_seconds_per_clip": mean_of(lambda c: c.real),
        "synthetic_seconds_per_clip": mean_of(lambda c: not c.real),
        "peak_rss_growth_mib": result["peak_rss_growth_kib"] / 1024,
    }


def frames_agreement(clips: Sequence[str]) -> dict:
    """avdag's frames vs the recipe-style reader's and torchcodec's: shape, indices and fps, pixels."""
    others = ("recipe_decode_all", "qwen_vl_utils_torchcodec")
    counts = {other: {"same_shape": 0, "same_indices_and_fps": 0, "diffs": []} for other in others}
    for clip in clips:
        ours, ours_fps, ours_indices = avdag_frames(clip)
        for other in others:
            theirs, theirs_fps, theirs_indices = FRAME_READERS[other](clip)
            count = counts[other]
            count["same_indices_and_fps"] += ours_indices == theirs_indices and abs(ours_fps - theirs_fps) < 1e-6
            if ours.shape == theirs.shape:
                count["same_shape"] += 1
                count["diffs"].append(float((ours - theirs).abs().mean()))
    return {
        other: {
            "clips": len(clips),
            "same_shape": c["same_shape"],
            "same_indices_and_fps": c["same_indices_and_fps"],
            "mean_abs_pixel_diff": statistics.fmean(c["diffs"]) if c["diffs"] else None,
            "max_clip_mean_abs_pixel_diff": max(c["diffs"]) if c["diffs"] else None,
        }
        for other, c in counts.items()
    }


def bench_decoders(clips: Sequence[Clip], passes: int, work: Path, log: Callable[[str], None]) -> dict:
    rows = {}
    for name in DECODERS:
        log(f"frame sampling: {name} ...")
        rows[name] = measure_decoder(name, clips, passes, work)
    avdag = rows["avdag_sample_frames"]
    for row in rows.values():
        row["time_vs_avdag"] = row["seconds_per_clip"] / avdag["seconds_per_clip"]
        row["memory_vs_avdag"] = (
            row["peak_rss_growth_kib"] / avdag["peak_rss_growth_kib"] if avdag["peak_rss_growth_kib"] > 0 else None
        )
    log("frame sampling: comparing frames ...")
    return {"clips": len(clips), "passes": passes, "rows": rows, "agreement": frames_agreement([c.path for c in clips])}


# ----------------------------------------------------------------------------------------------
# Captioning: recipe loop vs avdag engine
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    text: str
    new_tokens: int


def answer_quality(replies: Sequence[Reply], cap: int) -> dict:
    from avdag.core.captioning.answers import answer_is_complete, parse_answer

    parsed = [parse_answer(r.text) for r in replies]
    return {
        "new_tokens": sum(r.new_tokens for r in replies),
        "mean_new_tokens": statistics.fmean(r.new_tokens for r in replies),
        "new_tokens_per_clip": [r.new_tokens for r in replies],
        "at_cap": sum(r.new_tokens >= cap for r in replies),
        "whole_json": sum(answer_is_complete(r.text) for r in replies),
        "parsed": sum(p.ok for p in parsed),
        "mean_fields_ok": statistics.fmean(sum(s == "ok" for s in p.field_status.values()) for p in parsed),
    }


def loop_row(name: str, replies: Sequence[Reply], wall_s: float, cap: int, **extra) -> dict:
    quality = answer_quality(replies, cap)
    return {
        "loop": name,
        "clips": len(replies),
        "wall_s": wall_s,
        "clips_per_s": len(replies) / wall_s,
        "tokens_per_s": quality["new_tokens"] / wall_s,
        "max_new_tokens": cap,
        **quality,
        **extra,
    }


def recipe_caption(model, processor, path: str, prompts, max_new_tokens: int) -> tuple[Reply, float]:
    """One clip the way the cookbook's LocalModel.generate does it; returns (reply, seconds reading frames)."""
    from avdag.core.captioning.conversations import caption_messages

    conversation = caption_messages(prompts.system_prompt, prompts.user_prompt, path, fps=FPS, max_pixels=MAX_PIXELS)
    text_prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    start = time.perf_counter()
    video, _, _ = recipe_frames(path)
    frames_s = time.perf_counter() - start
    inputs = processor(text=[text_prompt], images=None, videos=[video], padding=True, return_tensors="pt").to(
        model.device
    )
    generated = model.generate(
        **inputs, max_new_tokens=max_new_tokens, **RECIPE_SAMPLING, pad_token_id=processor.tokenizer.eos_token_id
    )
    new_ids = generated[0, inputs.input_ids.shape[1] :]
    text = processor.batch_decode([new_ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0].strip()
    return Reply(text, int(new_ids.numel())), frames_s


def run_recipe_loop(model_path: str, clips: Sequence[str], prompts, max_new_tokens: int) -> dict:
    import torch

    from avdag.core.captioning.model import load_model_and_processor

    model, processor = load_model_and_processor(model_path, "cpu")
    torch.manual_seed(0)
    recipe_caption(model, processor, clips[0], prompts, min(WARMUP_MAX_NEW_TOKENS, max_new_tokens))
    replies, frames_s, clip_s = [], 0.0, []
    start = time.perf_counter()
    for clip in clips:
        clip_start = time.perf_counter()
        reply, seconds = recipe_caption(model, processor, clip, prompts, max_new_tokens)
        clip_s.append(time.perf_counter() - clip_start)
        replies.append(reply)
        frames_s += seconds
    wall = time.perf_counter() - start
    stopped_s = [t for t, r in zip(clip_s, replies) if r.new_tokens < max_new_tokens]
    return loop_row(
        "recipe",
        replies,
        wall,
        max_new_tokens,
        batch_size=1,
        frames_s=frames_s,
        seconds_per_clip=clip_s,
        stopped_clips_per_s=len(stopped_s) / sum(stopped_s) if stopped_s else None,
    )


def run_engine(model_path: str, clips: Sequence[str], prompts, batch_size: int, max_new_tokens: int) -> dict:
    from avdag.core.captioning.engine import VlmCaptioner
    from avdag.core.captioning.model import GenerationSettings

    captioner = VlmCaptioner(
        model_path,
        device="cpu",
        settings=GenerationSettings(max_new_tokens=max_new_tokens),
        clips_per_generate=batch_size,
    )
    captioner.caption(clips[0], prompts.system_prompt, prompts.user_prompt)  # model load + warm-up
    start = time.perf_counter()
    outputs = dict(captioner.caption_stream(list(clips), prompts.system_prompt, prompts.user_prompt))
    wall = time.perf_counter() - start
    errors = [o.error for o in outputs.values() if o.error]
    if errors:
        raise RuntimeError(f"engine failed on {len(errors)} clip(s): {errors[0]}")
    replies = [Reply(outputs[i].raw_text, outputs[i].new_tokens) for i in range(len(clips))]
    return loop_row(f"engine_batch{batch_size}", replies, wall, max_new_tokens, batch_size=batch_size)


def bench_captioning(model_path: str, clips: Sequence[str], prompts, sizes: Sizes, log: Callable[[str], None]) -> dict:
    log(f"recipe loop over {len(clips)} clips ...")
    recipe = run_recipe_loop(model_path, clips, prompts, sizes.recipe_max_new_tokens)
    log("avdag engine, batch 1 ...")
    engine_1 = run_engine(model_path, clips, prompts, 1, sizes.engine_max_new_tokens)
    log(f"avdag engine, batch {sizes.engine_batch} ...")
    engine_n = run_engine(model_path, clips, prompts, sizes.engine_batch, sizes.engine_max_new_tokens)
    stopped = recipe["stopped_clips_per_s"]
    return {
        "rows": [recipe, engine_1, engine_n],
        # The engine as it runs by default here: batch 1 on a CPU (default_batch_size), 8 on a GPU.
        "ratio_engine_vs_recipe": engine_1["clips_per_s"] / recipe["clips_per_s"],
        "ratio_engine_batchN_vs_recipe": engine_n["clips_per_s"] / recipe["clips_per_s"],
        "ratio_batching": engine_n["clips_per_s"] / engine_1["clips_per_s"],
        "ratio_engine_vs_recipe_stopped_only": engine_1["clips_per_s"] / stopped if stopped else None,
        "ratio_engine_batchN_vs_recipe_stopped_only": engine_n["clips_per_s"] / stopped if stopped else None,
    }


# ----------------------------------------------------------------------------------------------
# Run and report
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }


def run(sizes: Sizes, work: Path, *, log: Callable[[str], None] = lambda m: None) -> dict:
    from avdag.core.captioning.prompts import load_prompt_set

    started = time.perf_counter()
    report: dict = {"sizes": asdict(sizes), "machine": machine_info()}
    with avdag_home_in(work):
        log("clips ...")
        clips = make_clips(work, sizes)
        prompts = load_prompt_set()
        report["model"] = fine_tuned_model(work, clips, prompts, sizes, log)
        paths = [c.path for c in clips]
        report["clips"] = {"total": len(clips), "real": sizes.real_copies, "synthetic": sizes.synthetic_clips}
        report["captioning"] = bench_captioning(report["model"]["path"], paths, prompts, sizes, log)
        report["decoders"] = bench_decoders(clips, sizes.decoder_passes, work, log)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - started
    return report


def _verdict(ratio: float, goal: float) -> str:
    return f"x{ratio:.2f} (goal >= {goal:g}x: {'met' if ratio >= goal else 'MISSED'})"


def format_captioning(report: dict) -> list[str]:
    cap, clips, sizes = report["captioning"], report["clips"], report["sizes"]
    lines = [
        f"captioning, {clips['total']} clips ({clips['real']} real 960x540 + {clips['synthetic']} synthetic 448x252), "
        "CPU; model load and one warm-up clip excluded",
        f"  {'':<48}{'clips':>6}{'wall s':>8}{'clips/s':>9}{'tok/s':>7}{'tok/clip':>9}{'at cap':>11}"
        f"{'whole JSON':>11}{'parsed':>8}{'fields ok':>10}",
    ]
    labels = {
        "recipe": "(a) recipe loop: decode-all, sampled, one by one",
        "engine_batch1": "(b) avdag engine, batch 1 (CPU default)",
    }
    for row in cap["rows"]:
        label = labels.get(row["loop"], f"(bN) avdag engine, batch {row['batch_size']} (GPU default 8)")
        lines.append(
            f"  {label:<48}{row['clips']:>6}{row['wall_s']:>8.1f}{row['clips_per_s']:>9.3f}"
            f"{row['tokens_per_s']:>7.0f}{row['mean_new_tokens']:>9.0f}"
            f"{str(row['at_cap']) + ' of ' + str(row['max_new_tokens']):>11}"
            f"{str(row['whole_json']) + '/' + str(row['clips']):>11}{str(row['parsed']) + '/' + str(row['clips']):>8}"
            f"{row['mean_fields_ok']:>7.1f}/15"
        )
    recipe = cap["rows"][0]
    lines += [
        f"  clips/s (b)/(a): {_verdict(cap['ratio_engine_vs_recipe'], GOAL_CLIPS_PER_S)}; "
        f"(bN)/(a) x{cap['ratio_engine_batchN_vs_recipe']:.2f}; "
        f"batching on this CPU (bN)/(b) x{cap['ratio_batching']:.2f}",
        f"  recipe loop: reading frames {recipe['frames_s']:.1f} s of {recipe['wall_s']:.1f} s "
        f"({100 * recipe['frames_s'] / recipe['wall_s']:.0f}%); "
        f"{recipe['clips'] - recipe['at_cap']}/{recipe['clips']} replies ended with <|im_end|>",
    ]
    if recipe["at_cap"]:
        lines.append(
            f"  NOTE: {recipe['at_cap']} recipe replies ran to the {recipe['max_new_tokens']}-token cap "
            "(sampling ran on past the answer), which dominates the recipe's time"
        )
        if recipe["stopped_clips_per_s"]:
            lines.append(
                f"  without them, the recipe does {recipe['stopped_clips_per_s']:.3f} clips/s: (b)/(a) "
                f"{_verdict(cap['ratio_engine_vs_recipe_stopped_only'], GOAL_CLIPS_PER_S)}, "
                f"(bN)/(a) x{cap['ratio_engine_batchN_vs_recipe_stopped_only']:.2f}"
            )
    if (
        sizes["recipe_max_new_tokens"] != RECIPE_MAX_NEW_TOKENS
        or sizes["engine_max_new_tokens"] != ENGINE_MAX_NEW_TOKENS
    ):
        lines.append(
            f"  NOTE: token caps reduced (recipe {sizes['recipe_max_new_tokens']}, engine "
            f"{sizes['engine_max_new_tokens']}) and a short fine-tune: a structural run, not the benchmark's ratios"
        )
    return lines


def format_decoders(report: dict) -> list[str]:
    dec = report["decoders"]
    lines = [
        f"frame sampling, {dec['clips']} clips at fps {FPS:g}, max_pixels {MAX_PIXELS} "
        f"(fresh subprocess each; per clip, best of {dec['passes']} passes)",
        f"  {'':<40}{'s/clip':>8}{'clips/s':>9}{'real s':>8}{'synth s':>9}{'peak RSS +MiB':>15}"
        f"{'time vs avdag':>15}{'memory vs avdag':>17}",
    ]
    for name in DECODERS:
        row = dec["rows"][name]
        memory = "n/a" if row["memory_vs_avdag"] is None else f"x{row['memory_vs_avdag']:.1f}"
        lines.append(
            f"  {DECODER_LABELS[name]:<40}{row['seconds_per_clip']:>8.3f}{row['clips_per_s']:>9.2f}"
            f"{_seconds(row['real_seconds_per_clip']):>8}{_seconds(row['synthetic_seconds_per_clip']):>9}"
            f"{row['peak_rss_growth_mib']:>15.0f}{'x' + format(row['time_vs_avdag'], '.2f'):>15}{memory:>17}"
        )
    recipe, avdag = dec["rows"]["recipe_decode_all"], dec["rows"]["avdag_sample_frames"]
    by_kind = [
        f"{kind} clips x{recipe[key] / avdag[key]:.2f}"
        for kind, key in (("real", "real_seconds_per_clip"), ("synthetic", "synthetic_seconds_per_clip"))
        if avdag[key]
    ]
    lines.append(
        f"  avdag sample_frames vs recipe decode-all, time: {_verdict(recipe['time_vs_avdag'], GOAL_FRAME_SAMPLING)}"
        f" ({', '.join(by_kind)})"
    )
    for other, agree in dec["agreement"].items():
        diff = agree["mean_abs_pixel_diff"]
        lines.append(
            f"  frames, avdag vs {DECODER_LABELS[other]}: same shape {agree['same_shape']}/{agree['clips']}, "
            f"same indices+fps {agree['same_indices_and_fps']}/{agree['clips']}, mean |pixel diff| "
            + ("n/a" if diff is None else f"{diff:.3f} (worst clip {agree['max_clip_mean_abs_pixel_diff']:.3f})")
        )
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(report: dict) -> str:
    model, machine = report["model"], report["machine"]
    lines = format_captioning(report) + [""] + format_decoders(report) + [""]
    lines.append(
        f"fine-tune (not part of the comparison): {model['steps']} steps x {model['batch_size']} of "
        f"{model['examples']} examples, lr {model['learning_rate']:g}, loss {model['first_loss']:.2f} -> "
        f"{model['last_loss']:.2f}, {model['train_s']:.0f} s" + (" (cached, not re-trained)" if model["cached"] else "")
    )
    lines.append(
        f"machine: {machine['cpus']} CPUs, torch threads {machine['torch_threads']}, device {machine['device']}, "
        f"torch {machine['torch']}, load average {machine['load_average_start'][0]:.1f} at start, "
        f"{machine['load_average_end'][0]:.1f} at end"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 clips, 20 training steps (answers do not stop), token caps 512/128: a structural run",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument(
        "--work", type=Path, help="work dir to keep and reuse (clips, fine-tuned model); default: a temp dir"
    )
    parser.add_argument("--decoder-child", choices=DECODERS, help=argparse.SUPPRESS)
    parser.add_argument("--clip-list", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decoder_child:
        clips = json.loads(args.clip_list.read_text())
        print(json.dumps(measure_decoder_here(args.decoder_child, clips, args.passes)))
        return 0

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sizes = QUICK if args.quick else FULL
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        report = run(sizes, args.work.resolve(), log=log)
    else:
        with tempfile.TemporaryDirectory(prefix="avdag-bench-captioning-") as tmp:
            report = run(sizes, Path(tmp), log=log)
    print(format_report(report))
    print(
        f"\n(total {report['total_s']:.1f} s, "
        + ("fine-tune cached)" if report["model"]["cached"] else "fine-tune included)")
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
