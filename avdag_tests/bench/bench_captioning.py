"""Benchmark: captioning throughput, the cookbook's caption loop vs avdag's engine, and frame sampling.

    python -m avdag_tests.bench.bench_captioning              # 16 clips (4 real + 12 synthetic), 3 repeats
    python -m avdag_tests.bench.bench_captioning --quick      # 4 clips, short fine-tune, small caps: structure only
    python -m avdag_tests.bench.bench_captioning --work DIR   # keep clips and the fine-tuned model for re-runs
    python -m avdag_tests.bench.bench_captioning --check      # exit 1 when a goal is missed
    python -m avdag_tests.bench.bench_captioning --json out.json

Setup (not measured). A work dir (a temp dir unless --work) holds $AVDAG_HOME, the clips and the model.
The clips are byte-unique copies of the real 960x540 dashcam clip (221 frames, 1152 video tokens)
interleaved with synthetic 448x252 clips (40 frames, 576 video tokens). The embedded tiny model is
random and never stops, so both loops would only measure their token caps; a barely trained one
stops under greedy decoding but runs on to the cap under the recipe's sampling, which makes any
comparison a count of generated tokens. So the model is first fine-tuned as the demo does it
(`train_sft`, 800 steps, on the clips' own labels, the real clip's once, with the project's
prompts) until its replies end with <|im_end|> under the recipe's sampling too. Both sides then
caption with this same checkpoint, on the CPU; every row shows how many replies ran to the cap.
The checkpoint is cached in the work dir under the training run's fingerprint (--work skips training).

Captioning, the same clips in the same process. Three loops, each loaded and warmed up once
(one short reply, not timed), then timed over all clips once per repeat; the order of the loops
alternates between repeats (a, b1, b2, then b2, b1, a, ...), so a trend in the machine's load does
not favour one side. Sampled loops are seeded per repeat.
(a) recipe loop, as the cookbook's `avha_caption.py` / `model_reason.py` do it: one clip at a time,
    build the conversation, read the frames the way qwen-vl-utils' torchvision reader does, then
    `processor(text=[...], videos=[...], padding=True)` (no fps passed, as in the recipe) and
    `generate(max_new_tokens=4096, do_sample=True, temperature=0.1, top_p=0.9, repetition_penalty=1.05)`,
    decode. torchvision 0.29 no longer has `io.read_video`, so its PyAV backend is re-done here step by
    step: decode every frame and keep it, convert each to rgb24, stack them into one uint8 tensor; then
    qwen-vl-utils' own `smart_nframes`, `torch.linspace(...).round()` indices, `smart_resize` and the
    bicubic antialiased resize of `fetch_video`. A reply ends at <|im_end|> or at the 4096-token cap.
(b1) avdag's engine at the recipe's generation settings: `VlmCaptioner.caption_stream` with the same
    sampling, repetition penalty and 4096-token cap, no JSON stop; CPU default batch 1, frames from
    `sample_frames` on a helper thread while the previous clip generates. Same tokens to generate as
    (a), so this row measures the engine itself: tokens/s and clips/s.
(b2) avdag's engine at its defaults: greedy, stop as soon as the JSON object closes, 1024-token cap,
    batch 1. Against (a) this is what a user of each gets; the gain is mostly tokens not generated.
(--batch-row N adds the engine at its defaults with batch N, e.g. the GPU default 8, against (b2).)
Reported per loop (medians over repeats): clips/s, generated tokens/s (every generated token, stop
token included, over wall time), and over all repeats: mean new tokens per clip, replies at the cap,
replies holding a whole JSON object / parsing at all, mean valid rubric fields (of 15). The two
comparisons, (b1)/(a) and (b2)/(a), are printed side by side, each ratio as median [min..max] of the
per-repeat ratios.

Frame sampling: each decoder, in a fresh subprocess of its own, samples every clip at fps 2 and
max_pixels 16*9*28*28, once per repeat, in alternating order: qwen-vl-utils' torchcodec reader
(`fetch_video` with FORCE_QWENVL_VIDEO_READER=torchcodec; what qwen-vl-utils picks when torchcodec is
installed, so the reader a recipe user gets today), avdag's `sample_frames`, and for reference the
decode-all reader above (qwen-vl-utils' torchvision path). Reported: seconds per clip (each clip's best
of a few passes), overall and per clip kind, and peak RSS growth over the post-import baseline, as
medians over repeats; the speed ratios as median [min..max]. Peak RSS is the child's VmHWM, reset after
its imports, not `ru_maxrss`: a child process starts out with its parent's `ru_maxrss` (it survives fork
and exec), which hides the child's own peak once the parent holds a model. The frames themselves are
compared in this process: same shape, indices and sample fps, and the mean absolute pixel difference.

Goals (each printed met or MISSED; `--check` exits 1 when one is missed):
- every reply of (a), (b1) and (b2) ends by itself (none at its cap): otherwise the rows compare caps;
- (b1)/(a) tokens/s >= 1.0x (median): at equal work the engine is not slower than the recipe loop;
- (b2)/(a) clips/s >= 1.2x (median): avdag's defaults caption faster than the recipe as written;
- avdag `sample_frames` vs the torchcodec reader: speed >= 1.0x (median) and a lower peak memory.

What limits the ratios. At the recipe's settings both sides run the same model for about the same
number of tokens, and on this CPU with a toy model each decoding step is many tiny ops, so per-token
cost is framework overhead, about equal on both sides; what the engine can save there is frame reading
(on a helper thread, converting only the sampled frames), a small share of a clip's time. At its
defaults it also skips sampling's per-step work (top-p, temperature, repetition penalty) and stops at
most 8 tokens after the JSON object closes, which with a model that stops by itself saves little.
Frame sampling is bounded by decoding: every frame up to the last wanted one must be decoded by every
reader (the real clip has a keyframe every 1.2 s, more than the 0.5 s between sampled frames, so
seeking saves nothing); avdag decodes with PyAV frame by frame in Python, torchcodec in C++, and the
memory saving (only the sampled frames are kept) is avdag's larger win. Everything here runs torch on
all cores, so other busy processes slow every row, and unevenly (OpenMP waits for descheduled
threads): the spread [min..max] shows how much, and the load average is printed with the results.

Nothing here asserts a timing in a test; numbers are printed (and optionally written as JSON).
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
from dataclasses import asdict, dataclass, replace
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
WARMUP_MAX_NEW_TOKENS = 32  # each loop's warm-up reply: enough to run every code path once
GOAL_RECIPE_SETTINGS_TOKENS = 1.0  # (b1)/(a) tokens/s
GOAL_DEFAULTS_CLIPS = 1.2  # (b2)/(a) clips/s
GOAL_FRAME_SAMPLING_SPEED = 1.0  # avdag sample_frames vs qwen-vl-utils' torchcodec reader
DECODERS = ("qwen_vl_utils_torchcodec", "avdag_sample_frames", "recipe_decode_all")
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
    repeats: int = 3
    decoder_passes: int = 3
    recipe_max_new_tokens: int = RECIPE_MAX_NEW_TOKENS
    engine_max_new_tokens: int = ENGINE_MAX_NEW_TOKENS
    batch_row: int = 0  # >0: also the engine's defaults at this batch size
    learning_rate: float = 2e-3
    train_batch: int = 2


# 800 steps, the trainer's default, as the demo trains: replies then end by themselves under sampling too.
FULL = Sizes(real_copies=4, synthetic_clips=12, train_steps=800)
QUICK = Sizes(
    real_copies=1,
    synthetic_clips=3,
    train_steps=20,
    repeats=2,
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

        # One torch thread: on a busy machine a second OpenMP thread mostly spins (the weights are the same).
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_sft(base, examples, output, settings, device="cpu", progress=progress)
        finally:
            torch.set_num_threads(threads)
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


def bench_decoders(clips: Sequence[Clip], passes: int, repeats: int, work: Path, log: Callable[[str], None]) -> dict:
    """Every decoder once per repeat, the order reversed on every other repeat."""
    runs: dict[str, list[dict]] = {name: [] for name in DECODERS}
    for repeat in range(repeats):
        for name in DECODERS if repeat % 2 == 0 else DECODERS[::-1]:
            log(f"frame sampling, repeat {repeat + 1}/{repeats}: {name} ...")
            runs[name].append(measure_decoder(name, clips, passes, work))
    rows = {}
    for name, measured in runs.items():
        rows[name] = {
            "runs": measured,
            **{
                key: _median_or_none([m[key] for m in measured])
                for key in (
                    "seconds_per_clip",
                    "real_seconds_per_clip",
                    "synthetic_seconds_per_clip",
                    "peak_rss_growth_kib",
                    "peak_rss_growth_mib",
                )
            },
        }
        rows[name]["clips_per_s"] = 1 / rows[name]["seconds_per_clip"]
    avdag = runs["avdag_sample_frames"]
    speed = {
        other: spread([o["seconds_per_clip"] / a["seconds_per_clip"] for o, a in zip(runs[other], avdag)])
        for other in DECODERS
        if other != "avdag_sample_frames"
    }
    log("frame sampling: comparing frames ...")
    return {
        "clips": len(clips),
        "passes": passes,
        "repeats": repeats,
        "rows": rows,
        "avdag_speed_vs": speed,  # other reader's seconds / avdag's seconds, per repeat: > 1 means avdag is faster
        "agreement": frames_agreement([c.path for c in clips]),
    }


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def spread(values: Sequence[float]) -> dict:
    """A ratio over repeats: median, min, max and every value."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


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


class RecipeLoop:
    """(a) The cookbook's LocalModel.generate, one clip at a time; the model is loaded and warmed up once."""

    name = "recipe"

    def __init__(self, model_path: str, prompts, max_new_tokens: int, warmup_clip: str):
        from avdag.core.captioning.model import load_model_and_processor

        self.model, self.processor = load_model_and_processor(model_path, "cpu")
        self.prompts, self.max_new_tokens = prompts, max_new_tokens
        self.caption(warmup_clip, min(WARMUP_MAX_NEW_TOKENS, max_new_tokens))

    def caption(self, path: str, max_new_tokens: int) -> tuple[Reply, float]:
        """One clip; returns (reply, seconds reading frames)."""
        from avdag.core.captioning.conversations import caption_messages

        model, processor, prompts = self.model, self.processor, self.prompts
        conversation = caption_messages(
            prompts.system_prompt, prompts.user_prompt, path, fps=FPS, max_pixels=MAX_PIXELS
        )
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
        text = processor.batch_decode([new_ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
        return Reply(text.strip(), int(new_ids.numel())), frames_s

    def run(self, clips: Sequence[str], seed: int) -> dict:
        import torch

        torch.manual_seed(seed)
        replies, frames_s = [], 0.0
        start = time.perf_counter()
        for clip in clips:
            reply, seconds = self.caption(clip, self.max_new_tokens)
            replies.append(reply)
            frames_s += seconds
        wall = time.perf_counter() - start
        return loop_row(self.name, replies, wall, self.max_new_tokens, batch_size=1, frames_s=frames_s)


class EngineLoop:
    """(b1)/(b2) avdag's `VlmCaptioner.caption_stream` over all clips; loaded and warmed up once."""

    def __init__(self, name: str, model_path: str, prompts, settings, batch_size: int, warmup_clip: str):
        from dataclasses import replace

        from avdag.core.captioning.engine import VlmCaptioner

        self.name, self.prompts, self.settings = name, prompts, settings
        self.captioner = VlmCaptioner(model_path, device="cpu", settings=settings, clips_per_generate=batch_size)
        # Warm up on a short reply: the settings are read per generate, so a capped copy serves once.
        self.captioner.settings = replace(settings, max_new_tokens=min(WARMUP_MAX_NEW_TOKENS, settings.max_new_tokens))
        self.captioner.caption(warmup_clip, prompts.system_prompt, prompts.user_prompt)
        self.captioner.settings = settings

    def run(self, clips: Sequence[str], seed: int) -> dict:
        import torch

        torch.manual_seed(seed)
        start = time.perf_counter()
        outputs = dict(self.captioner.caption_stream(list(clips), self.prompts.system_prompt, self.prompts.user_prompt))
        wall = time.perf_counter() - start
        errors = [o.error for o in outputs.values() if o.error]
        if errors:
            raise RuntimeError(f"engine failed on {len(errors)} clip(s): {errors[0]}")
        replies = [Reply(outputs[i].raw_text, outputs[i].new_tokens) for i in range(len(clips))]
        batch = self.captioner.clips_per_generate
        return loop_row(self.name, replies, wall, self.settings.max_new_tokens, batch_size=batch)


def recipe_generation_settings(max_new_tokens: int):
    """The engine set up as the recipe generates: same sampling and penalty, same cap, no JSON stop."""
    from avdag.core.captioning.model import GenerationSettings

    return GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=RECIPE_SAMPLING["temperature"],
        top_p=RECIPE_SAMPLING["top_p"],
        repetition_penalty=RECIPE_SAMPLING["repetition_penalty"],
        stop_at_json_end=False,
        fps=FPS,
        max_pixels=MAX_PIXELS,
    )


def summarize_loop(runs: Sequence[dict]) -> dict:
    """One loop over all repeats: medians of the rates, totals of the replies' outcomes."""
    replies = sum(r["clips"] for r in runs)
    return {
        "loop": runs[0]["loop"],
        "batch_size": runs[0]["batch_size"],
        "max_new_tokens": runs[0]["max_new_tokens"],
        "clips": runs[0]["clips"],
        "replies": replies,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "clips_per_s": statistics.median(r["clips_per_s"] for r in runs),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "mean_new_tokens": sum(r["new_tokens"] for r in runs) / replies,
        "at_cap": sum(r["at_cap"] for r in runs),
        "whole_json": sum(r["whole_json"] for r in runs),
        "parsed": sum(r["parsed"] for r in runs),
        "mean_fields_ok": sum(r["mean_fields_ok"] * r["clips"] for r in runs) / replies,
        "runs": list(runs),
    }


def bench_captioning(model_path: str, clips: Sequence[str], prompts, sizes: Sizes, log: Callable[[str], None]) -> dict:
    from avdag.core.captioning.model import GenerationSettings

    log("loading and warming up the loops ...")
    loops = [
        RecipeLoop(model_path, prompts, sizes.recipe_max_new_tokens, clips[0]),
        EngineLoop(
            "engine_recipe_settings",
            model_path,
            prompts,
            recipe_generation_settings(sizes.recipe_max_new_tokens),
            1,
            clips[0],
        ),
        EngineLoop(
            "engine_defaults",
            model_path,
            prompts,
            GenerationSettings(max_new_tokens=sizes.engine_max_new_tokens, fps=FPS, max_pixels=MAX_PIXELS),
            1,
            clips[0],
        ),
    ]
    if sizes.batch_row:
        loops.append(
            EngineLoop(
                f"engine_defaults_batch{sizes.batch_row}",
                model_path,
                prompts,
                GenerationSettings(max_new_tokens=sizes.engine_max_new_tokens, fps=FPS, max_pixels=MAX_PIXELS),
                sizes.batch_row,
                clips[0],
            )
        )
    runs: dict[str, list[dict]] = {loop.name: [] for loop in loops}
    for repeat in range(sizes.repeats):
        for loop in loops if repeat % 2 == 0 else loops[::-1]:
            log(f"captioning, repeat {repeat + 1}/{sizes.repeats}: {loop.name} over {len(clips)} clips ...")
            runs[loop.name].append(loop.run(clips, seed=1000 + repeat))

    def ratio(side: str, base: str, key: str) -> dict:
        return spread([s[key] / b[key] for s, b in zip(runs[side], runs[base])])

    report = {
        "rows": [summarize_loop(r) for r in runs.values()],
        "recipe_settings": {
            "tokens_per_s": ratio("engine_recipe_settings", "recipe", "tokens_per_s"),
            "clips_per_s": ratio("engine_recipe_settings", "recipe", "clips_per_s"),
        },
        "defaults": {
            "tokens_per_s": ratio("engine_defaults", "recipe", "tokens_per_s"),
            "clips_per_s": ratio("engine_defaults", "recipe", "clips_per_s"),
        },
    }
    if sizes.batch_row:
        report["batching"] = ratio(f"engine_defaults_batch{sizes.batch_row}", "engine_defaults", "clips_per_s")
    return report


# ----------------------------------------------------------------------------------------------
# Run, goals and report
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
        report["decoders"] = bench_decoders(clips, sizes.decoder_passes, sizes.repeats, work, log)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - started
    report["goals"] = goals(report)
    return report


def goals(report: dict) -> dict[str, bool]:
    """Each goal the docstring states, met or not."""
    cap, dec = report["captioning"], report["decoders"]
    compared = ("recipe", "engine_recipe_settings", "engine_defaults")
    rows = {row["loop"]: row for row in cap["rows"]}
    avdag, torchcodec = dec["rows"]["avdag_sample_frames"], dec["rows"]["qwen_vl_utils_torchcodec"]
    return {
        "replies_end_by_themselves": all(rows[name]["at_cap"] == 0 for name in compared),
        "recipe_settings_tokens_per_s": cap["recipe_settings"]["tokens_per_s"]["median"] >= GOAL_RECIPE_SETTINGS_TOKENS,
        "defaults_clips_per_s": cap["defaults"]["clips_per_s"]["median"] >= GOAL_DEFAULTS_CLIPS,
        "frame_sampling_speed_vs_torchcodec": dec["avdag_speed_vs"]["qwen_vl_utils_torchcodec"]["median"]
        >= GOAL_FRAME_SAMPLING_SPEED,
        "frame_sampling_memory_below_torchcodec": avdag["peak_rss_growth_kib"] < torchcodec["peak_rss_growth_kib"],
    }


def _met(met: bool) -> str:
    return "met" if met else "MISSED"


def _ratio(summary: dict) -> str:
    return f"x{summary['median']:.2f} [{summary['min']:.2f}..{summary['max']:.2f}]"


LOOP_LABELS = {
    "recipe": "(a) recipe loop: decode-all, sampled, one by one",
    "engine_recipe_settings": "(b1) avdag engine at the recipe's settings",
    "engine_defaults": "(b2) avdag engine at its defaults",
}


def format_captioning(report: dict) -> list[str]:
    cap, clips, sizes, met = report["captioning"], report["clips"], report["sizes"], report["goals"]
    rows = {row["loop"]: row for row in cap["rows"]}
    lines = [
        f"captioning, {clips['total']} clips ({clips['real']} real 960x540 + {clips['synthetic']} synthetic 448x252), "
        f"CPU, {sizes['repeats']} repeats in alternating order; model load and warm-up excluded",
        f"  {'':<50}{'cap':>6}{'wall s':>8}{'clips/s':>9}{'tok/s':>7}{'tok/clip':>9}{'at cap':>9}"
        f"{'whole JSON':>11}{'parsed':>8}{'fields ok':>10}",
    ]
    for row in cap["rows"]:
        label = LOOP_LABELS.get(row["loop"], f"(bN) avdag engine at its defaults, batch {row['batch_size']}")
        replies = row["replies"]
        at_cap, whole, parsed = (f"{row[key]}/{replies}" for key in ("at_cap", "whole_json", "parsed"))
        lines.append(
            f"  {label:<50}{row['max_new_tokens']:>6}{row['wall_s']:>8.1f}{row['clips_per_s']:>9.3f}"
            f"{row['tokens_per_s']:>7.0f}{row['mean_new_tokens']:>9.0f}{at_cap:>9}{whole:>11}{parsed:>8}"
            f"{row['mean_fields_ok']:>7.1f}/15"
        )
    recipe = rows["recipe"]
    lines += [
        "  (rates: median over repeats; replies, tokens and fields: over all repeats)",
        f"  {'engine vs recipe loop, median [min..max]':<50}{'clips/s':>22}{'tokens/s':>22}",
        f"  {'(1) both at the recipe settings: (b1)/(a)':<50}{_ratio(cap['recipe_settings']['clips_per_s']):>22}"
        f"{_ratio(cap['recipe_settings']['tokens_per_s']):>22}",
        f"  {'(2) avdag defaults vs the recipe: (b2)/(a)':<50}{_ratio(cap['defaults']['clips_per_s']):>22}"
        f"{_ratio(cap['defaults']['tokens_per_s']):>22}",
        f"  recipe loop: reading frames {sum(r['frames_s'] for r in recipe['runs']):.1f} s of "
        f"{sum(r['wall_s'] for r in recipe['runs']):.1f} s",
    ]
    if "batching" in cap:
        lines.append(f"  batching on this CPU, (bN)/(b2) clips/s: {_ratio(cap['batching'])}")
    at_cap = ", ".join(f"{name} {rows[name]['at_cap']}" for name in LOOP_LABELS)
    lines += [
        f"  goal: every reply ends by itself (replies at the cap: {at_cap}): {_met(met['replies_end_by_themselves'])}",
        f"  goal: (1) tokens/s >= {GOAL_RECIPE_SETTINGS_TOKENS:g}x (median): "
        f"{_met(met['recipe_settings_tokens_per_s'])}",
        f"  goal: (2) clips/s >= {GOAL_DEFAULTS_CLIPS:g}x (median): {_met(met['defaults_clips_per_s'])}",
    ]
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
    dec, met = report["decoders"], report["goals"]
    lines = [
        f"frame sampling, {dec['clips']} clips at fps {FPS:g}, max_pixels {MAX_PIXELS}, {dec['repeats']} repeats "
        f"in alternating order (fresh subprocess each; per clip, best of {dec['passes']} passes; medians)",
        f"  {'':<40}{'s/clip':>8}{'clips/s':>9}{'real s':>8}{'synth s':>9}{'peak RSS +MiB':>15}{'avdag faster by':>24}",
    ]
    for name in DECODERS:
        row = dec["rows"][name]
        speed = "" if name == "avdag_sample_frames" else _ratio(dec["avdag_speed_vs"][name])
        lines.append(
            f"  {DECODER_LABELS[name]:<40}{row['seconds_per_clip']:>8.3f}{row['clips_per_s']:>9.2f}"
            f"{_seconds(row['real_seconds_per_clip']):>8}{_seconds(row['synthetic_seconds_per_clip']):>9}"
            f"{row['peak_rss_growth_mib']:>15.0f}{speed:>24}"
        )
    lines += [
        f"  goal: avdag vs torchcodec reader, speed >= {GOAL_FRAME_SAMPLING_SPEED:g}x (median): "
        f"{_met(met['frame_sampling_speed_vs_torchcodec'])}; lower peak memory: "
        f"{_met(met['frame_sampling_memory_below_torchcodec'])}",
    ]
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
        help="4 clips, 20 training steps (replies do not stop), token caps 512/128, 2 repeats: a structural run",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per loop and decoder (default: 3, --quick 2)")
    parser.add_argument("--batch-row", type=int, default=0, metavar="N", help="add the engine's defaults at batch N")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
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
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    if args.batch_row:
        sizes = replace(sizes, batch_row=args.batch_row)
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
    missed = [name for name, met in report["goals"].items() if not met]
    if args.check and missed:
        print(f"bench_captioning --check: goals missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
