"""A tiny random Idefics3 (or SmolVLM) checkpoint written by transformers: a 2-layer SigLIP
(64-pixel tiles of 16-pixel patches), a pixel-shuffle connector and a 2-layer Llama, with the
bundled model's tokenizer plus Idefics3's special tokens and a chat template that places
images."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

from core.models.loader import default_gguf, gguf_metadata

MODEL_TYPE = "idefics3"
MODEL_TYPES = ("idefics3", "smolvlm")
SPECIAL = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}"
    "{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'image' %}<image>"
    "{% else %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write(out: Path, seed: int = 0, model_type: str = MODEL_TYPE) -> Path:
    """Write the checkpoint into ``out`` (created); returns ``out``."""
    smol = model_type == "smolvlm"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_metadata(default_gguf()))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, eos_token_id=2)
    config = (SmolVLMConfig if smol else Idefics3Config)(
        text_config=text.to_dict(), scale_factor=2,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = (SmolVLMForConditionalGeneration if smol else Idefics3ForConditionalGeneration)
    model(config).eval().save_pretrained(out)
    images = (SmolVLMImageProcessorPil if smol else Idefics3ImageProcessorPil)(
        size={"longest_edge": 128}, max_image_size={"longest_edge": 64})
    # SmolVLM's own processor needs a video processor (torchvision): Idefics3's writes the
    # same files but for the class name, which SmolVLM's reads
    Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                      chat_template=TEMPLATE).save_pretrained(out)
    if smol:
        config_file = out / "processor_config.json"
        config_file.write_text(config_file.read_text().replace("Idefics3Processor",
                                                               "SmolVLMProcessor"))
    return out
