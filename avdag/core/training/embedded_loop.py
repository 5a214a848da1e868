"""Embedded supervised fine-tuning: the recipe's SFT objective in plain PyTorch/transformers.

Each example is the conversation `conversations.sft_messages` builds (the same one cosmos-rl
would train on); the loss covers only the assistant's tokens. Logits are computed only at
supervised positions: full-vocabulary logits for every prompt and video token are most of the
memory and time on a CPU and contribute nothing to the loss.

A run is resumable: every `checkpoint_every` steps the trainable weights, the optimizer and the
scheduler are saved (safetensors + JSON, no pickles) under a state folder tagged with a
fingerprint of what is being trained. The example order and the random state of every step are
functions of (seed, step), so a resumed run ends with the weights an uninterrupted one has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from avdag.core.captioning.model import encode_conversation, load_model_and_processor
from avdag.core.captioning.model_family import BASE_FAMILY_KEY, detect_family
from avdag.core.common.atomic import atomic_directory
from avdag.core.common.model_identity import model_fingerprint

IGNORE = -100
# The language model's attention and MLP projections; the vision tower's blocks also have
# gate/up/down_proj, so the pattern is anchored at the language model (transformers >= 4.52 names).
LORA_TARGET_MODULES = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SftSettings:
    """Everything that shapes the trained weights (and so the checkpoint's identity)."""

    steps: int = 800  # optimizer steps; the one default every trainer entry point uses
    batch_size: int = 2  # examples per step, accumulated one at a time (no padding)
    learning_rate: float = 2e-3  # suits the embedded tiny model; the recipe uses 2e-6 for 7B
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    fps: float = 2.0
    max_pixels: int = 16 * 9 * 28 * 28  # Qwen2.5-VL's recipe budget; see SftTrainerResource.settings_for
    lora_rank: int = 0  # 0: full fine-tune; >0: LoRA on LORA_TARGET_MODULES, merged at export
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SftExample:
    clip_id: str
    video_path: str
    messages: list[dict[str, Any]]  # system, user {video, rubric}, assistant (label string)


@dataclass(frozen=True)
class SftResult:
    output_dir: Path
    losses: list[tuple[int, float]]
    seconds: float  # training time over all attempts, resumed ones included
    examples: int
    resumed_from: int = 0  # the step a saved state was resumed at; 0 for a fresh run


Progress = Callable[[dict[str, Any]], None]


def encode_example(processor, example: SftExample, settings: SftSettings) -> dict[str, Any]:
    """Model inputs plus labels that are IGNORE everywhere but the assistant's reply."""
    full = encode_conversation(
        processor,
        example.messages,
        example.video_path,
        fps=settings.fps,
        max_pixels=settings.max_pixels,
        add_generation_prompt=False,
    )
    prompt_text = processor.apply_chat_template(example.messages[:-1], tokenize=False, add_generation_prompt=True)
    full_text = processor.apply_chat_template(example.messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"{example.clip_id}: chat template does not extend the prompt with the answer")
    answer_ids = processor.tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    ids = full["input_ids"]
    prompt_len = ids.shape[1] - len(answer_ids)
    if ids[0, prompt_len:].tolist() != answer_ids:
        raise ValueError(f"{example.clip_id}: answer tokens do not line up with the full conversation")
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE
    # Supervise the reply and its <|im_end|>, not the newline the template adds after it.
    labels[:, -1] = IGNORE if processor.tokenizer.decode(ids[0, -1]) == "\n" else labels[:, -1]
    return {**dict(full), "labels": labels}


def supervised_loss(model, batch: dict[str, Any]):
    """Cross-entropy over assistant tokens only, projecting just those positions to the vocabulary."""
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][mask])
    return F.cross_entropy(logits.float(), targets[mask])


def run_fingerprint(base_model: str, settings: SftSettings, examples: list[SftExample]) -> str:
    """Names one training run: a saved state is resumed only by a run with the same fingerprint."""
    payload = json.dumps(
        {
            "base_model": model_fingerprint(base_model),
            "settings": settings.as_dict(),
            "examples": [[e.clip_id, e.video_path, e.messages] for e in examples],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_sft(
    base_model: str,
    examples: list[SftExample],
    output_dir: str | Path,
    settings: SftSettings = SftSettings(),
    *,
    device: str = "auto",
    checkpoint_every: int = 50,
    state_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> SftResult:
    """Fine-tune `base_model` on `examples`; write a loadable checkpoint to `output_dir` atomically.

    Resumes from `state_dir` (default `<output_dir>.state`) when it holds a state of this very
    run, saves one there every `checkpoint_every` steps (0: never) and removes it at the end.
    """
    import torch

    if not examples:
        raise ValueError("no training examples: the train split is empty")
    output_dir = Path(output_dir)
    state_dir = Path(state_dir) if state_dir else output_dir.with_name(output_dir.name + ".state")
    fingerprint = run_fingerprint(base_model, settings, examples)
    family = detect_family(base_model)  # refuses an unsupported or inconsistent base before loading it
    torch.manual_seed(settings.seed)  # LoRA's initial adapter weights
    model, processor = load_model_and_processor(base_model, device, family)
    load_dtype = model.dtype
    model.train()
    lora = _add_lora(model, settings) if settings.lora_rank else None
    trainable = _fp32_trainable_parameters(model)
    encoded = [_to_device(encode_example(processor, ex, settings), model.device) for ex in examples]
    optimizer = torch.optim.AdamW(trainable.values(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings.warmup_steps, settings.steps))
    resumed = _resume(state_dir, fingerprint, trainable, optimizer, scheduler)
    order = _example_order(len(encoded), settings.steps * settings.batch_size, settings.seed)
    losses, start = list(resumed.losses), time.perf_counter()
    for step in range(resumed.step + 1, settings.steps + 1):
        torch.manual_seed(_step_seed(settings.seed, step))  # dropout, if any, as an uninterrupted run draws it
        batch = [encoded[i] for i in order[(step - 1) * settings.batch_size : step * settings.batch_size]]
        loss = _optimizer_step(model, batch, trainable, optimizer, scheduler, settings.grad_clip, load_dtype)
        losses.append((step, loss))
        seconds = resumed.seconds + time.perf_counter() - start
        if checkpoint_every and step % checkpoint_every == 0 and step < settings.steps:
            _save_state(state_dir, _State(fingerprint, step, losses, seconds), trainable, optimizer, scheduler)
        if progress:
            progress(_progress_event(step, settings, loss, time.perf_counter() - start, resumed.step))
    seconds = resumed.seconds + time.perf_counter() - start
    export = (lora.merge_and_unload(safe_merge=True) if lora else model).to(load_dtype)
    record = {
        "settings": settings.as_dict(),
        "lora": _lora_record(settings),
        "trainable_parameters": sum(p.numel() for p in trainable.values()),
        "losses": losses,
        "seconds": seconds,
        "resumed_from": resumed.step,
        "base_model": base_model,
        BASE_FAMILY_KEY: family.name,  # a loader refuses this checkpoint as the other family
        "examples": [e.clip_id for e in examples],
    }
    _save_atomically(export, processor, output_dir, record)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return SftResult(output_dir, losses, seconds, len(examples), resumed.step)


def _add_lora(model, settings: SftSettings):
    """Wrap `model` with LoRA adapters in place; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
    )
    return get_peft_model(model, config)


def _lora_record(settings: SftSettings) -> dict[str, Any] | None:
    if not settings.lora_rank:
        return None
    return {
        "rank": settings.lora_rank,
        "alpha": settings.lora_alpha,
        "dropout": settings.lora_dropout,
        "target_modules": LORA_TARGET_MODULES,
    }


def _fp32_trainable_parameters(model) -> dict[str, Any]:
    """The trainable parameters by name, kept in fp32: AdamW updates vanish when rounded to bf16.

    On a GPU the model loads in bf16; trained weights become fp32 master weights and the forward
    pass runs under bf16 autocast. On a CPU everything is fp32 already.
    """
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for p in trainable.values():
        p.data = p.data.float()
    return trainable


def _optimizer_step(model, batch, trainable, optimizer, scheduler, grad_clip: float, compute_dtype) -> float:
    """Accumulate gradients one example at a time, then take one optimizer step.

    Each example's loss is the mean over its own answer tokens and every example weighs 1/len(batch),
    so a long answer does not outweigh a short one. Returns that batch mean.
    """
    import torch

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for example in batch:
        with _autocast(model.device, compute_dtype):
            loss = supervised_loss(model, example) / len(batch)
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(list(trainable.values()), grad_clip)
    optimizer.step()
    scheduler.step()
    return total


def _autocast(device, compute_dtype) -> AbstractContextManager:
    """Matmuls in the dtype the model was loaded in (bf16 on a GPU); a no-op for fp32."""
    import torch

    return torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)


def _progress_event(step: int, settings: SftSettings, loss: float, elapsed: float, resumed_from: int) -> dict[str, Any]:
    done = step - resumed_from
    return {
        "step": step,
        "steps": settings.steps,
        "loss": loss,
        "elapsed_s": elapsed,
        "eta_s": elapsed / done * (settings.steps - step),
        "resumed_from": resumed_from,
        "examples_per_s": done * settings.batch_size / elapsed,
    }


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _example_order(n: int, needed: int, seed: int) -> list[int]:
    """Epoch-wise shuffles, concatenated until `needed` examples are drawn.

    Step k's examples depend on the seed and k only."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < needed:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order.extend(epoch)
    return order[:needed]


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}".encode()).digest()[:8], "little")


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --- resumable state: <state_dir>/step-<k>/{trainable,optimizer}.safetensors + state.json ---

_WEIGHTS, _OPTIMIZER, _RECORD = "trainable.safetensors", "optimizer.safetensors", "state.json"


@dataclass(frozen=True)
class _State:
    fingerprint: str
    step: int
    losses: list[tuple[int, float]]
    seconds: float


_FRESH = _State("", 0, [], 0.0)


def _save_state(state_dir: Path, state: _State, trainable, optimizer, scheduler) -> None:
    """Write step-<k> under a temporary name and rename it into place, then drop older steps."""
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".step-", dir=state_dir))
    final = state_dir / f"step-{state.step:08d}"
    try:
        save_file({name: p.detach().cpu().contiguous() for name, p in trainable.items()}, staging / _WEIGHTS)
        optimizer_tensors, optimizer_json = _flatten_optimizer_state(optimizer.state_dict())
        save_file(optimizer_tensors, staging / _OPTIMIZER)
        record = {**asdict(state), "optimizer": optimizer_json, "scheduler": scheduler.state_dict()}
        (staging / _RECORD).write_text(json.dumps(record, indent=1))
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for older in state_dir.iterdir():
        if older != final:
            shutil.rmtree(older)


def _resume(state_dir: Path, fingerprint: str, trainable, optimizer, scheduler) -> _State:
    """Load the latest saved state of this run into the model, optimizer and scheduler, if there is one."""
    import torch
    from safetensors.torch import load_file

    saved = sorted(state_dir.glob("step-*")) if state_dir.is_dir() else []
    if not saved:
        return _FRESH
    record = json.loads((saved[-1] / _RECORD).read_text())
    if record["fingerprint"] != fingerprint:
        log.warning(f"{state_dir} holds the state of another run (fingerprint mismatch); starting fresh")
        shutil.rmtree(state_dir)
        return _FRESH
    weights = load_file(saved[-1] / _WEIGHTS)
    if weights.keys() != trainable.keys():
        raise ValueError(f"{saved[-1]}: saved parameters do not match the model's trainable parameters")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(weights[name])
    optimizer.load_state_dict(_unflatten_optimizer_state(load_file(saved[-1] / _OPTIMIZER), record["optimizer"]))
    scheduler.load_state_dict(record["scheduler"])
    log.info(f"resuming at step {record['step']} from {saved[-1]}")
    return _State(fingerprint, record["step"], [tuple(pair) for pair in record["losses"]], record["seconds"])


def _flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split `optimizer.state_dict()` into '<param index>.<key>' tensors and a JSON-able rest."""
    import torch

    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer_state(tensors: dict[str, Any], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for name, value in [*tensors.items(), *rest["scalars"].items()]:
        index, key = name.split(".", 1)
        state[int(index)][key] = value
    return {"state": dict(state), "param_groups": rest["param_groups"]}


def _save_atomically(model, processor, output_dir: Path, record: dict[str, Any]) -> None:
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "avdag_training.json").write_text(json.dumps(record, indent=2))
