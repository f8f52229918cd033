"""Gemma 3 with vision: a SigLIP encoder, a projector that pools its patches to
``mm_tokens_per_image`` embeddings, a Gemma 3 language model. An image is one run of
``<image_soft_token>`` placeholders between ``<start_of_image>`` and ``<end_of_image>``, and
in prefill the placeholders of one image attend to each other both ways (transformers'
``token_type_ids``), on the sliding layers within their window. The processor's
pan-and-scan crops (off by default) are not supported: each crop would be a run of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidRequestError
from core.models.vision.tower import (
    VisionTower,
    build_image_model,
    image_token,
    placeholder_runs,
)

MODEL_TYPES = ("gemma3",)
PARTS = ("vision_tower", "multi_modal_projector")
# Gemma3TextConfig's defaults for what a checkpoint's text_config may leave out (the 4B and
# larger ones give only their sizes and rope scaling)
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 256, "query_pre_attn_scalar": 256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
    "sliding_window": 4096, "hidden_activation": "gelu_pytorch_tanh"}


def accepts(hf_config: dict[str, Any]) -> bool:
    """A ``gemma3`` config is a vision checkpoint only with a ``vision_config``."""
    return "vision_config" in hf_config


def text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    text = TEXT_DEFAULTS | dict(hf_config.get("text_config") or {})
    text.setdefault("model_type", "gemma3_text")
    # the whole model's tie and end-of-turn tokens decide (the instruct models stop at 106)
    text["tie_word_embeddings"] = hf_config.get("tie_word_embeddings", True)
    if hf_config.get("eos_token_id") is not None:
        text["eos_token_id"] = hf_config["eos_token_id"]
    return text


class Gemma3Tower(VisionTower):
    bidirectional_images = True

    def __init__(self, model_dir: Path, model_type: str) -> None:
        super().__init__()
        from transformers import Gemma3Model

        self.model: Any = build_image_model(model_dir, Gemma3Model, PARTS)
        self.image_token_id = image_token(model_dir, "image_token_index")

    def encode(self, pixels: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        # every image is resized to the encoder's size: one batch
        values = torch.cat([p["pixel_values"] for p in pixels])
        out = self.model.get_image_features(values).pooler_output  # (images, tokens, hidden)
        return [e.float() for e in out]


def images(processor: Any, token_ids: list[int], outputs: dict[str, Any]
           ) -> list[tuple[int, int, dict[str, torch.Tensor]]]:
    """Each image's (offset, length, pixels) in a processed prompt: its run of placeholders,
    and its row of the processor's ``pixel_values``."""
    image_token_id = processor.tokenizer.image_token_id
    runs = placeholder_runs(token_ids, image_token_id)
    values = outputs["pixel_values"]
    if len(runs) != values.shape[0]:  # pan-and-scan: crops of an image behind runs of their own
        raise InvalidRequestError(f"the prompt holds {len(runs)} image placeholder runs for "
                                  f"{values.shape[0]} processed images", param="messages")
    return [(start, stop - start, {"pixel_values": values[k:k + 1]})
            for k, (start, stop) in enumerate(runs)]
