"""Build a tiny Qwen2.5-VL- or Qwen3-VL-architecture model, tokenizer and processor, locally.

No model hub is reachable here, so the embedded default is a randomly initialised model with
the exact architecture of Cosmos-Reason1-7B (Qwen2.5-VL) at toy sizes, a byte-level BPE
tokenizer trained on the project's own prompts and label vocabulary, the Qwen2.5-VL chat
template and `Qwen2_5_VLProcessor`. `family="qwen3_vl"` builds the Cosmos-Reason2 (Qwen3-VL)
counterpart the same way: patch 16, deepstack vision features, interleaved mrope, the Qwen3-VL
chat template (no default system turn) and `Qwen3VLProcessor` with its video processor, which
writes a timestamp before every temporal patch. It is written with `save_pretrained` and afterwards loaded
with `from_pretrained` on its path — exactly as the 7B model is — so every code path
(processor, chat template, video frames, generate, SFT loss) is the real one. It demonstrates
the pipeline, not caption quality.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# The Qwen2.5-VL special tokens, in Qwen's order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL's chat template (system turn defaulted, vision placeholders per content item).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL's (Instruct) chat template for system/user/assistant turns with text, image and video
# items; unlike Qwen2.5-VL's it adds no default system turn. Tool calls are left out.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the toy model; small enough to train a few hundred steps on 2 CPU cores."""

    vocab_size: int = 2048  # learned BPE merges; special tokens come on top
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 128
    vision_heads: int = 4
    seed: int = 0


def build_tiny_model(
    out_dir: str | Path, corpus: list[str], spec: TinyModelSpec = TinyModelSpec(), family: str = "qwen2_5_vl"
) -> Path:
    """Write model, tokenizer and processor of `family` ("qwen2_5_vl" or "qwen3_vl") to `out_dir`
    (atomically) and return it.

    `corpus` trains the tokenizer; pass the prompts and example labels so the rubric encodes in
    few tokens.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    make_processor, make_config = _BUILDERS[family]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    try:
        tokenizer = _train_tokenizer(corpus, spec.vocab_size)
        processor = make_processor(tokenizer)
        torch.manual_seed(spec.seed)
        model = AutoModelForImageTextToText.from_config(make_config(tokenizer, spec))
        model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "avdag_tiny_spec.json").write_text(json.dumps({**asdict(spec), "family": family}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE with Qwen2's pre-tokenizer, wrapped as Qwen2TokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    qwen_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen_split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _make_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def _make_config(tokenizer, spec: TinyModelSpec):
    from transformers import Qwen2_5_VLConfig

    head_dim = spec.hidden_size // spec.num_heads
    half = head_dim // 2
    # mrope splits the rotary half-dimension into (temporal, height, width) sections.
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    ids = tokenizer.convert_tokens_to_ids
    vocab = len(tokenizer)
    text_config = dict(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=32768,
        max_window_layers=spec.num_layers,
        rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "rope_type": "default", "mrope_section": mrope},
        tie_word_embeddings=True,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=2 * spec.vision_hidden_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,
        fullatt_block_indexes=[spec.vision_depth - 1],
        window_size=112,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
    )


def _make_qwen3_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    # Qwen3-VL's shipped preprocessor settings: patch 16, mean/std 0.5.
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def _make_qwen3_config(tokenizer, spec: TinyModelSpec):
    from transformers import Qwen3VLConfig

    head_dim = spec.hidden_size // spec.num_heads
    half = head_dim // 2
    # Qwen3-VL interleaves (temporal, height, width) over the rotary half; 24/20/20 of 64 at full size.
    third = (half * 5) // 16
    mrope = [half - 2 * third, third, third]
    ids = tokenizer.convert_tokens_to_ids
    vocab = len(tokenizer)
    text_config = dict(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=32768,
        rope_theta=5000000.0,
        rope_scaling={"rope_type": "default", "mrope_section": mrope, "mrope_interleaved": True},
        tie_word_embeddings=True,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=2 * spec.vision_hidden_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=256,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


_BUILDERS = {
    "qwen2_5_vl": (_make_processor, _make_config),
    "qwen3_vl": (_make_qwen3_processor, _make_qwen3_config),
}


def build_embedded_model(out_dir: str | Path, prompts, family: str = "qwen2_5_vl") -> Path:
    """An embedded model: a tiny model of `family` whose tokenizer learned avdag's prompts and labels."""
    return build_tiny_model(out_dir, tokenizer_corpus(prompts), family=family)


def tokenizer_corpus(prompts) -> list[str]:
    """Text the tiny tokenizer learns from: the rubric, its answer vocabulary and label-shaped JSON."""
    from avdag.core.common.labels import CATEGORICAL_FIELDS, METAACTIONS
    from avdag.demo.sample_data import REAL_LABEL
    from avdag.demo.synthetic_clips import label_for_scene, random_scene

    rng = random.Random(1234)
    labels = [json.dumps(label_for_scene(random_scene(rng), rng), indent=2) for _ in range(200)]
    vocab = [v for choices in CATEGORICAL_FIELDS.values() for v in choices] + list(METAACTIONS)
    return [prompts.system_prompt, prompts.user_prompt, REAL_LABEL.read_text(), "\n".join(vocab)] * 4 + labels
