"""A tiny random Gemma 3 checkpoint with vision, written by transformers: a 2-layer SigLIP
(64-pixel images of 8-pixel patches, pooled to 16 tokens an image), its projector and a
3-layer Gemma 3 language model whose sliding windows (8) are shorter than an image's 16
placeholders, with the bundled model's tokenizer plus Gemma 3's image tokens and a chat
template that places images. The projection and the norms are random (transformers starts
them at zero: every image would read as zeros)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
)

from core.models.loader import default_gguf, gguf_metadata

MODEL_TYPE = "gemma3"
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>"}
TOKENS_PER_IMAGE = 16
WINDOW = 8  # shorter than an image: its first placeholders drop out of the last ones' window
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}"
    "{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'image' %}"
    "<start_of_image>{% else %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write(out: Path, seed: int = 0) -> Path:
    """Write the checkpoint into ``out`` (created); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_metadata(default_gguf()),
                                              extra_special_tokens=IMAGE_TOKENS)
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1e6}}
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=2048, sliding_window=WINDOW, rope_parameters=rope,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = Gemma3Config(
        text_config=text.to_dict(), mm_tokens_per_image=TOKENS_PER_IMAGE,
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 8,
                       "vision_use_head": False},
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id, initializer_range=0.2)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mm_input_projection_weight"):
                param.normal_(0.0, 0.2)
            elif "norm" in name and "vision_tower" not in name:
                param.normal_(0.0, 0.1)
    model.save_pretrained(out)
    images = Gemma3ImageProcessorPil(size={"height": 64, "width": 64})
    Gemma3Processor(image_processor=images, tokenizer=tokenizer, chat_template=TEMPLATE,
                    image_seq_length=TOKENS_PER_IMAGE).save_pretrained(out)
    return out
