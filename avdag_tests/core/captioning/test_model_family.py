"""Two model families, one code path: detection, refusal, frames as each family's reference reader gives
them (qwen-vl-utils with image_patch_size 14 / 16, torchcodec), Qwen3-VL's video metadata, family checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch

from avdag.core.captioning.conversations import caption_messages
from avdag.core.captioning.engine import VlmCaptioner
from avdag.core.captioning.model import GenerationSettings, encode_conversation, frame_geometry, sample_for
from avdag.core.captioning.model_family import (
    FAMILIES,
    QWEN2_5_VL,
    QWEN3_VL,
    UnsupportedModelError,
    detect_family,
    require_family,
)
from avdag.core.ingest.video import RECIPE_MAX_PIXELS
from avdag.demo.sample_data import REAL_CLIP
from avdag.resources.captioner import CaptionerResource
from avdag.resources.storage import StateStoreResource
from avdag.resources.trainer import EmbeddedTrainerResource
from avdag_tests.core.ingest.test_video import load_qwen_vl_utils_with_torchcodec, per_frame_mean_abs_diff

PIXEL_TOLERANCE = 1.0  # per-frame mean |diff| in 0..255 levels, as the Qwen2.5-VL parity test allows


@pytest.fixture(scope="module")
def qwen3_model_path() -> str:
    """The embedded tiny Qwen3-VL, built (once per session, in the state store) as the demo builds it."""
    return CaptionerResource(model="embedded:tiny-qwen3-vl").base_model(StateStoreResource())


@pytest.fixture(scope="module")
def processors(tiny_model_path, qwen3_model_path) -> dict:
    from transformers import AutoProcessor

    return {
        QWEN2_5_VL.name: AutoProcessor.from_pretrained(tiny_model_path),
        QWEN3_VL.name: AutoProcessor.from_pretrained(qwen3_model_path),
    }


def _foreign_checkpoint(source: str, folder: Path, **config_changes) -> Path:
    """A copy of a checkpoint's config (no weights needed: detection reads config.json only)."""
    folder.mkdir()
    config = json.loads((Path(source) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **config_changes}))
    return folder


# --- detection and refusal -----------------------------------------------------------------------


def test_both_tiny_models_are_detected_from_their_config(tiny_model_path, qwen3_model_path):
    assert detect_family(tiny_model_path) is QWEN2_5_VL
    assert detect_family(qwen3_model_path) is QWEN3_VL
    assert detect_family("nvidia/Cosmos-Reason1-7B") is QWEN2_5_VL  # known id: nothing looked up offline
    assert (QWEN2_5_VL.frame_factor, QWEN3_VL.frame_factor) == (28, 32)
    assert QWEN2_5_VL.max_pixels == RECIPE_MAX_PIXELS and QWEN3_VL.max_pixels == 16 * 9 * 32 * 32


def test_an_unsupported_model_type_is_refused_at_resource_set_up_naming_the_families(tiny_model_path, tmp_path):
    llava = str(_foreign_checkpoint(tiny_model_path, tmp_path / "llava", model_type="llava"))
    resource = CaptionerResource(model=llava)
    with pytest.raises(dg.DagsterResourceFunctionError) as raised:
        with dg.build_resources({"captioner": resource}):  # as a run's step initialises it
            pass
    assert isinstance(raised.value.user_exception, UnsupportedModelError)
    message = str(raised.value.user_exception)
    assert "'llava'" in message and all(f.name in message for f in FAMILIES.values())
    with pytest.raises(UnsupportedModelError, match="qwen3_vl"):
        EmbeddedTrainerResource().check_base_model(llava)
    with dg.build_resources({"captioner": CaptionerResource(model=tiny_model_path)}) as ok:
        assert ok.captioner.model_family() is QWEN2_5_VL


def test_a_checkpoint_is_never_loaded_as_the_other_family(tiny_model_path, qwen3_model_path, tmp_path):
    # Weights of a Qwen3-VL fine-tune exported under a Qwen2.5-VL config: its record says otherwise.
    mislabelled = _foreign_checkpoint(tiny_model_path, tmp_path / "mislabelled")
    (mislabelled / "avdag_training.json").write_text(json.dumps({"base_family": "qwen3_vl"}))
    with pytest.raises(UnsupportedModelError, match="fine-tuned from a Qwen3-VL base"):
        detect_family(mislabelled)
    # A genuine Qwen3-VL checkpoint where the Qwen2.5-VL base's fine-tune is expected: refused before loading.
    with pytest.raises(UnsupportedModelError, match="Qwen2.5-VL \\(qwen2_5_vl\\) one is expected"):
        require_family(qwen3_model_path, QWEN2_5_VL)
    captioner = VlmCaptioner(qwen3_model_path, device="cpu", expected_family=QWEN2_5_VL)
    with pytest.raises(UnsupportedModelError):
        captioner.caption(str(REAL_CLIP), "s", "u")


# --- frames: each family's reference reader ------------------------------------------------------


@pytest.mark.parametrize("family", [QWEN2_5_VL, QWEN3_VL], ids=lambda f: f.name)
def test_frames_match_the_familys_reference_reader(family, processors, monkeypatch):
    vision_process = load_qwen_vl_utils_with_torchcodec(monkeypatch)
    processor = processors[family.name]
    assert frame_geometry(processor).factor == family.frame_factor  # read from the processor's own config
    element = {"video": str(REAL_CLIP), "fps": 2.0, "max_pixels": family.max_pixels}
    (reference, metadata), reference_fps = vision_process.fetch_video(
        element, image_patch_size=family.patch_size, return_video_sample_fps=True, return_video_metadata=True
    )
    ours = sample_for(processor, REAL_CLIP, fps=2.0, max_pixels=family.max_pixels)
    assert ours.frames.shape == reference.shape
    assert ours.frame_indices == metadata["frames_indices"]
    assert ours.metadata() == {k: metadata[k] for k in ("fps", "frames_indices", "total_num_frames")}
    assert ours.sample_fps == pytest.approx(reference_fps, rel=1e-12)
    diffs = per_frame_mean_abs_diff(ours.frames, reference)
    print(
        f"\n{family.name}: {tuple(ours.frames.shape)}, mean abs pixel diff {diffs.mean():.4f} (max {diffs.max():.4f})"
    )
    assert diffs.max() <= PIXEL_TOLERANCE


def test_qwen3_inputs_equal_the_recipes_with_video_metadata(processors, monkeypatch):
    """Qwen3-VL's prompt carries one timestamp per temporal patch, from the source fps and frame indices."""
    vision_process = load_qwen_vl_utils_with_torchcodec(monkeypatch)
    processor = processors[QWEN3_VL.name]
    messages = caption_messages("Label clips.", "Label it.", str(REAL_CLIP), fps=2.0, max_pixels=QWEN3_VL.max_pixels)
    ours = encode_conversation(
        processor, messages, REAL_CLIP, fps=2.0, max_pixels=QWEN3_VL.max_pixels, add_generation_prompt=True
    )
    _, videos, kwargs = vision_process.process_vision_info(
        messages, return_video_kwargs=True, return_video_metadata=True, image_patch_size=16
    )
    frames, metadata = zip(*videos)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    reference = processor(
        text=[text], videos=list(frames), video_metadata=list(metadata), do_resize=False, return_tensors="pt", **kwargs
    )
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    assert torch.equal(ours["video_grid_thw"], reference["video_grid_thw"])
    assert (ours["pixel_values_videos"] - reference["pixel_values_videos"]).abs().mean() < 0.015
    decoded = processor.tokenizer.decode(ours["input_ids"][0])
    indices = sample_for(processor, REAL_CLIP, fps=2.0, max_pixels=QWEN3_VL.max_pixels).frame_indices
    assert f"<{(indices[0] + indices[1]) / 2 / 25.0:.1f} seconds>" in decoded  # 25 fps source, not 24
    assert decoded.count(" seconds>") == int(ours["video_grid_thw"][0, 0])


# --- captioning ----------------------------------------------------------------------------------


def test_the_tiny_qwen3_model_captions_clips(qwen3_model_path):
    settings = GenerationSettings(max_new_tokens=12, max_pixels=QWEN3_VL.max_pixels)
    captioner = VlmCaptioner(qwen3_model_path, device="cpu", settings=settings, expected_family=QWEN3_VL)
    [(_, out)] = list(captioner.caption_stream([str(REAL_CLIP)], "Label clips.", "Label it."))
    assert out.error is None and 0 < out.new_tokens <= 12
    assert out.video_tokens == 8 * 9 * 16  # 8 temporal patches of 288x512 frames, 32-pixel tokens
    assert CaptionerResource(model="embedded:tiny-qwen3-vl").settings().max_pixels == QWEN3_VL.max_pixels


def test_a_copied_checkpoint_keeps_its_family(qwen3_model_path, tmp_path):
    copy = shutil.copytree(qwen3_model_path, tmp_path / "copy")
    assert detect_family(copy) is QWEN3_VL and require_family(copy, QWEN3_VL) is QWEN3_VL
