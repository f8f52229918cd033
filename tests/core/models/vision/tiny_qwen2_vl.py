"""A tiny random Qwen2-VL or Qwen2.5-VL checkpoint written by transformers: a 2-layer vision
encoder (8-pixel patches, 2 x 2 merged; Qwen2.5-VL's with one windowed and one full layer), a
2-layer Qwen2 language model with M-RoPE (head_dim 16, sections 2/3/3), the bundled model's
tokenizer plus the vision special tokens, and a chat template that places images. The
language model's weights are drawn wider than transformers' default (0.1, not 0.02), so that
positions move the logits well past the tests' tolerance (height and width exchanged: ~0.06)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from core.models.loader import default_gguf, gguf_metadata

MODEL_TYPE = "qwen2_5_vl"
MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}"
    "{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ p.text }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")
PATCH, MERGE = 8, 2
TEXT: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.1,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


def vision_config(model_type: str) -> dict[str, Any]:
    common = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=2)
    if model_type == "qwen2_vl":
        return common | dict(embed_dim=32, mlp_ratio=2, hidden_size=TEXT["hidden_size"])
    # windows of 2 x 2 merged patches in layer 0, the whole image in layer 1
    return common | dict(hidden_size=32, intermediate_size=64, out_hidden_size=TEXT["hidden_size"],
                         window_size=2 * MERGE * PATCH, fullatt_block_indexes=[1])


def write(out: Path, seed: int = 0, model_type: str = MODEL_TYPE) -> Path:
    """Write the checkpoint into ``out`` (created); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_metadata(default_gguf()))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config_class, model_class, processor_class = (
        (Qwen2VLConfig, Qwen2VLForConditionalGeneration, "Qwen2VLProcessor")
        if model_type == "qwen2_vl" else
        (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor"))
    config = config_class(
        text_config=TEXT | dict(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2),
        vision_config=vision_config(model_type),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model_class(config).eval().save_pretrained(out)
    # an image is 4..64 patches (2 x 2 ... 8 x 8 of 8 pixels): 1..16 placeholders
    images = Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
                                      min_pixels=(PATCH * MERGE) ** 2,
                                      max_pixels=(4 * PATCH * MERGE) ** 2)
    images.save_pretrained(out)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(out)
    # the processor's parts saved one by one, as on the Hub: transformers builds this
    # processor only with its video processor, which needs torchvision
    (out / "processor_config.json").write_text(json.dumps({"processor_class": processor_class}))
    return out
