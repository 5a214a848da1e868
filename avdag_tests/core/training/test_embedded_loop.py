"""The embedded trainer at full strength: resumable state, LoRA merged at export, bf16 master weights."""

import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file

import avdag.core.training.embedded_loop as training_loop
from avdag.core.captioning.conversations import sft_messages
from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.training.embedded_loop import LORA_TARGET_MODULES, SftExample, SftSettings, run_fingerprint, train_sft
from avdag.demo.sample_batch import REAL_CLIP_DIR
from avdag.resources.trainer import EmbeddedTrainerResource

REAL_VIDEO = str(REAL_CLIP_DIR / "solidWhiteRight.camera_front_wide_120fov.mp4")
REAL_LABEL = json.loads((REAL_CLIP_DIR / "solidWhiteRight.label.json").read_text())
LM_PROJECTIONS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


class Interrupted(Exception):
    pass


def _example(clip_id: str, weather: str) -> SftExample:
    prompts = load_prompt_set()
    label = {**REAL_LABEL, "weather": weather}
    return SftExample(
        clip_id,
        REAL_VIDEO,
        sft_messages(
            prompts.system_prompt, prompts.user_prompt, REAL_VIDEO, label, fps=2.0, max_pixels=16 * 9 * 28 * 28
        ),
    )


@pytest.fixture(scope="module")
def examples():
    """Three answers to one clip: with batch_size 2, batches straddle epochs and the shuffle matters."""
    return [_example("clear", "Clear skies"), _example("rain", "Rain"), _example("fog", "Fog")]


def _interrupt_at(step: int):
    def progress(event: dict) -> None:
        if event["step"] == step:
            raise Interrupted

    return progress


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize(
    "settings",
    [
        SftSettings(steps=8, batch_size=2, learning_rate=3e-3, warmup_steps=2),
        SftSettings(steps=8, batch_size=2, learning_rate=1e-2, warmup_steps=2, lora_rank=4, lora_dropout=0.1),
    ],
    ids=["full", "lora-with-dropout"],
)
def test_an_interrupted_run_resumes_to_exactly_the_weights_of_an_uninterrupted_one(
    tiny_model_path, examples, settings, tmp_path, caplog
):
    reference = train_sft(tiny_model_path, examples, tmp_path / "reference", settings, device="cpu", checkpoint_every=0)

    with pytest.raises(Interrupted):
        train_sft(
            tiny_model_path,
            examples,
            tmp_path / "ckpt",
            settings,
            device="cpu",
            checkpoint_every=3,
            progress=_interrupt_at(7),
        )
    state = tmp_path / "ckpt.state"
    assert [p.name for p in state.iterdir()] == ["step-00000006"]  # step 3 replaced by step 6, no staging left
    saved = load_file(state / "step-00000006" / "trainable.safetensors")
    assert all(("lora_" in name) == bool(settings.lora_rank) for name in saved)
    assert not (tmp_path / "ckpt").exists()

    events = []
    caplog.set_level(logging.INFO, logger=training_loop.__name__)
    resumed = train_sft(
        tiny_model_path, examples, tmp_path / "ckpt", settings, device="cpu", checkpoint_every=3, progress=events.append
    )
    assert "resuming at step 6" in caplog.text
    assert [e["step"] for e in events] == [7, 8] and {e["resumed_from"] for e in events} == {6}
    assert set(events[0]) == {"step", "steps", "loss", "elapsed_s", "eta_s", "resumed_from", "examples_per_s"}
    assert resumed.resumed_from == 6 and resumed.losses == reference.losses  # bit-identical, steps 7-8 recomputed
    expected = _weights(tmp_path / "reference")
    actual = _weights(tmp_path / "ckpt")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert json.loads((tmp_path / "ckpt" / "avdag_training.json").read_text())["resumed_from"] == 6
    assert not state.exists()


def test_a_state_saved_by_another_run_is_discarded_and_training_starts_from_the_base(
    tiny_model_path, examples, tmp_path, caplog
):
    first = SftSettings(steps=4, batch_size=1, learning_rate=3e-3, warmup_steps=1)
    with pytest.raises(Interrupted):
        train_sft(
            tiny_model_path,
            examples[:1],
            tmp_path / "ckpt",
            first,
            device="cpu",
            checkpoint_every=2,
            progress=_interrupt_at(3),
        )
    assert (tmp_path / "ckpt.state" / "step-00000002").is_dir()

    other = SftSettings(steps=4, batch_size=1, learning_rate=1e-3, warmup_steps=1)
    events = []
    result = train_sft(
        tiny_model_path,
        examples[:1],
        tmp_path / "ckpt",
        other,
        device="cpu",
        checkpoint_every=0,
        progress=events.append,
    )
    assert "fingerprint mismatch" in caplog.text and "starting fresh" in caplog.text
    assert [e["step"] for e in events] == [1, 2, 3, 4] and result.resumed_from == 0
    fresh = train_sft(tiny_model_path, examples[:1], tmp_path / "fresh", other, device="cpu", checkpoint_every=0)
    assert result.losses == fresh.losses  # nothing of the other run's state leaked in
    assert not (tmp_path / "ckpt.state").exists()


def test_fingerprint_names_base_settings_and_answers(tiny_model_path, examples):
    settings = SftSettings()
    fingerprint = run_fingerprint(tiny_model_path, settings, examples)
    assert fingerprint == run_fingerprint(tiny_model_path, SftSettings(), list(examples))
    assert fingerprint != run_fingerprint("nvidia/Cosmos-Reason1-7B", settings, examples)
    assert fingerprint != run_fingerprint(tiny_model_path, SftSettings(learning_rate=1e-4), examples)
    assert fingerprint != run_fingerprint(tiny_model_path, SftSettings(lora_rank=8), examples)
    assert fingerprint != run_fingerprint(
        tiny_model_path, settings, [examples[0], _example("rain", "Snow"), examples[2]]
    )


def test_lora_trains_only_language_model_projections_and_exports_a_merged_plain_checkpoint(
    tiny_model_path, examples, tmp_path
):
    from transformers import Qwen2_5_VLForConditionalGeneration

    settings = SftSettings(steps=6, batch_size=1, learning_rate=1e-2, warmup_steps=1, lora_rank=8)
    result = train_sft(tiny_model_path, examples[:1], tmp_path / "lora", settings, device="cpu", checkpoint_every=0)
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < losses[0] - 0.3

    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "lora", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    base, merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict(), model.state_dict()
    assert base.keys() == merged.keys()
    adapted = {name for name in base if re.fullmatch(LORA_TARGET_MODULES + r"\.weight", name)}
    layers = model.config.text_config.num_hidden_layers
    assert adapted == {f"model.language_model.layers.{i}.{p}.weight" for i in range(layers) for p in LM_PROJECTIONS}
    assert all(not torch.equal(base[name], merged[name]) for name in adapted)
    assert all(
        torch.equal(base[name], merged[name]) for name in base.keys() - adapted
    )  # vision tower, embeddings, norms

    record = json.loads((tmp_path / "lora" / "avdag_training.json").read_text())
    expected_trainable = settings.lora_rank * sum(base[name].shape[0] + base[name].shape[1] for name in adapted)
    assert record["trainable_parameters"] == expected_trainable
    assert expected_trainable * 20 < sum(t.numel() for t in base.values())
    assert record["lora"]["rank"] == 8 and record["resumed_from"] == 0


@pytest.mark.parametrize("lora_rank", [0, 8], ids=["full", "lora"])
def test_a_bf16_model_trains_fp32_master_weights_and_exports_bf16(
    tiny_model_path, examples, tmp_path, monkeypatch, lora_rank
):
    """The GPU's dtype on the CPU: the model loads in bf16, as load_model_and_processor does on CUDA."""
    load = training_loop.load_model_and_processor

    def load_in_bf16(path, device, *family):
        model, processor = load(path, device, *family)
        return model.to(torch.bfloat16), processor

    monkeypatch.setattr(training_loop, "load_model_and_processor", load_in_bf16)
    settings = SftSettings(steps=3, batch_size=1, learning_rate=1e-2, warmup_steps=1, lora_rank=lora_rank)
    with pytest.raises(Interrupted):
        train_sft(
            tiny_model_path,
            examples[:1],
            tmp_path / "ckpt",
            settings,
            device="cpu",
            checkpoint_every=2,
            progress=_interrupt_at(3),
        )
    saved = load_file(tmp_path / "ckpt.state" / "step-00000002" / "trainable.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}

    result = train_sft(tiny_model_path, examples[:1], tmp_path / "ckpt", settings, device="cpu", checkpoint_every=2)
    losses = [loss for _, loss in result.losses]
    assert result.resumed_from == 2 and losses[-1] < losses[0]
    assert {t.dtype for t in _weights(tmp_path / "ckpt").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["dtype"] == "bfloat16"


def test_checkpoint_cadence_is_not_part_of_the_checkpoint_identity():
    assert (
        EmbeddedTrainerResource(checkpoint_every=7).settings().as_dict()
        == EmbeddedTrainerResource().settings().as_dict()
    )
    lora = EmbeddedTrainerResource(lora_rank=8, lora_alpha=32, lora_dropout=0.05).settings()
    assert (lora.lora_rank, lora.lora_alpha, lora.lora_dropout) == (8, 32, 0.05)


@pytest.mark.parametrize("lora_rank", [0, 8], ids=["full", "lora"])
def test_a_qwen3_vl_base_trains_exports_and_reloads_as_qwen3_vl(tmp_path, lora_rank):
    """The other family through the same loop: 32-pixel frames with timestamps, LoRA on the same projections."""
    from avdag.core.captioning.engine import VlmCaptioner
    from avdag.core.captioning.model import GenerationSettings, load_model_and_processor
    from avdag.core.captioning.model_family import (
        QWEN2_5_VL,
        QWEN3_VL,
        UnsupportedModelError,
        detect_family,
        require_family,
    )
    from avdag.resources.captioner import CaptionerResource
    from avdag.resources.storage import StateStoreResource

    base = CaptionerResource(model="embedded:tiny-qwen3-vl").base_model(StateStoreResource())
    prompts = load_prompt_set()
    messages = sft_messages(
        prompts.system_prompt, prompts.user_prompt, REAL_VIDEO, REAL_LABEL, fps=2.0, max_pixels=QWEN3_VL.max_pixels
    )
    settings = EmbeddedTrainerResource(steps=2, batch_size=1, learning_rate=1e-2, warmup_steps=1, lora_rank=lora_rank)
    result = train_sft(
        base,
        [SftExample("solidWhiteRight", REAL_VIDEO, messages)],
        tmp_path / "ckpt",
        settings.settings_for(QWEN3_VL),
        device="cpu",
        checkpoint_every=0,
    )
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < losses[0]
    record = json.loads((tmp_path / "ckpt" / "avdag_training.json").read_text())
    assert record["base_family"] == "qwen3_vl" and record["settings"]["max_pixels"] == 16 * 9 * 32 * 32
    model, processor = load_model_and_processor(str(tmp_path / "ckpt"), "cpu", QWEN3_VL)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration" and detect_family(tmp_path / "ckpt") is QWEN3_VL
    del model, processor
    # the fine-tune captions through the engine as a Qwen3-VL: 32-pixel tokens, 8 temporal patches
    settings = GenerationSettings(max_new_tokens=8, max_pixels=QWEN3_VL.max_pixels)
    tuned = VlmCaptioner(str(tmp_path / "ckpt"), device="cpu", settings=settings, expected_family=QWEN3_VL)
    [(_, out)] = list(tuned.caption_stream([str(REAL_VIDEO)], prompts.system_prompt, prompts.user_prompt))
    assert out.error is None and 0 < out.new_tokens <= 8 and out.video_tokens == 8 * 9 * 16
    if lora_rank:
        assert not (tmp_path / "ckpt" / "adapter_config.json").exists()  # merged into a plain checkpoint
    with pytest.raises(UnsupportedModelError, match="only used with the family it was trained from"):
        require_family(tmp_path / "ckpt", QWEN2_5_VL)  # e.g. as the fine-tune of a Qwen2.5-VL base
