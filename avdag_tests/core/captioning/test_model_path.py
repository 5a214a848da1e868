"""The tiny model's code path: chat template, label masking, the loss, generation and stopping."""

import json

import pytest
import torch

from avdag.core.captioning.conversations import sft_messages
from avdag.core.captioning.engine import VlmCaptioner
from avdag.core.captioning.model import GenerationSettings, encode_conversation, load_model_and_processor
from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.common.labels import format_label_as_answer
from avdag.core.training.embedded_loop import (
    IGNORE,
    SftExample,
    SftSettings,
    encode_example,
    supervised_loss,
    train_sft,
)
from avdag.demo.sample_batch import REAL_CLIP_DIR

REAL_VIDEO = str(REAL_CLIP_DIR / "solidWhiteRight.camera_front_wide_120fov.mp4")
REAL_LABEL = json.loads((REAL_CLIP_DIR / "solidWhiteRight.label.json").read_text())


@pytest.fixture(scope="module")
def prompts():
    return load_prompt_set()


@pytest.fixture(scope="module")
def example(prompts):
    messages = sft_messages(
        prompts.system_prompt, prompts.user_prompt, REAL_VIDEO, REAL_LABEL, fps=2.0, max_pixels=16 * 9 * 28 * 28
    )
    return SftExample("solidWhiteRight", REAL_VIDEO, messages)


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    return load_model_and_processor(tiny_model_path, "cpu")


def test_tiny_model_loads_as_qwen2_5_vl_with_its_processor(loaded):
    model, processor = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")


def test_labels_supervise_exactly_the_assistant_reply(loaded, example):
    model, processor = loaded
    batch = encode_example(processor, example, SftSettings())
    supervised = batch["labels"][0][batch["labels"][0] != IGNORE]
    text = processor.tokenizer.decode(supervised)
    assert text == format_label_as_answer(REAL_LABEL) + "<|im_end|>"
    video_tokens = int((batch["input_ids"] == model.config.video_token_id).sum())
    assert video_tokens == 1152  # 8 temporal patches x 144 merged patches, as qwen-vl-utils gives


def test_supervised_loss_equals_the_models_own_masked_loss(loaded, example):
    model, processor = loaded
    batch = encode_example(processor, example, SftSettings())
    with torch.no_grad():
        ours = supervised_loss(model, batch)
        reference = model(**batch).loss  # full-vocabulary logits at every position
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5)


def test_short_training_lowers_the_loss_and_saves_a_loadable_checkpoint(tiny_model_path, example, tmp_path):
    result = train_sft(
        tiny_model_path,
        [example],
        tmp_path / "ckpt",
        SftSettings(steps=8, batch_size=1, learning_rate=3e-3, warmup_steps=1),
    )
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < 0.8 * losses[0]
    saved = json.loads((tmp_path / "ckpt" / "avdag_training.json").read_text())
    assert saved["examples"] == ["solidWhiteRight"] and len(saved["losses"]) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "staging or state folder left behind"
    load_model_and_processor(str(tmp_path / "ckpt"), "cpu")


def test_greedy_captions_are_deterministic_and_bounded(tiny_model_path, prompts):
    captioner = VlmCaptioner(tiny_model_path, device="cpu", settings=GenerationSettings(max_new_tokens=24))
    first = captioner.caption(REAL_VIDEO, prompts.system_prompt, prompts.user_prompt)
    second = captioner.caption(REAL_VIDEO, prompts.system_prompt, prompts.user_prompt)
    assert first.raw_text == second.raw_text
    assert first.new_tokens <= 24 and first.video_tokens == 1152
    assert first.prompt_tokens > first.video_tokens


def test_stopping_criterion_fires_once_the_json_object_closes(loaded):
    """Checked on real token ids of the label answer: not before the closing brace, at it after."""
    from avdag.core.captioning.engine import JsonAnswerComplete

    _, processor = loaded
    tokenizer = processor.tokenizer
    prompt = torch.tensor([[1, 2, 3]])
    answer = tokenizer(format_label_as_answer(REAL_LABEL), return_tensors="pt")["input_ids"]
    close = tokenizer.decode(answer[0]).rindex("}")
    stop = JsonAnswerComplete(tokenizer, prompt_len=3, every=1)
    fired = [bool(stop(torch.cat([prompt, answer[:, :n]], dim=1), None)[0]) for n in range(1, answer.shape[1] + 1)]
    first = fired.index(True)
    assert not any(fired[:first]) and all(fired[first:])
    assert len(tokenizer.decode(answer[0, : first + 1])) > close  # fires at the token that closes the object


def test_encode_conversation_does_not_resize_sampled_frames(loaded, prompts):
    _, processor = loaded
    from avdag.core.captioning.conversations import caption_messages

    messages = caption_messages(
        prompts.system_prompt, prompts.user_prompt, REAL_VIDEO, fps=2.0, max_pixels=16 * 9 * 28 * 28
    )
    inputs = encode_conversation(
        processor, messages, REAL_VIDEO, fps=2.0, max_pixels=16 * 9 * 28 * 28, add_generation_prompt=True
    )
    assert inputs["video_grid_thw"].tolist() == [[8, 18, 32]]  # 252x448 frames, not upscaled by min_pixels
