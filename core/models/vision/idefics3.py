"""Idefics3 and SmolVLM: a SigLIP encoder, a pixel-shuffle connector, a Llama language model.
An image is cut into tiles plus a downscaled whole; each tile's placeholders run between
``<row_r_col_c>`` markers, the whole's after ``<global-img>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.models.vision.tower import (
    VisionTower,
    build_image_model,
    image_token,
    placeholder_runs,
)

MODEL_TYPES = ("idefics3", "smolvlm")
PARTS = ("vision_model", "connector")


def text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    text = dict(hf_config["text_config"])
    text.setdefault("model_type", "llama")
    # the whole model's tie decides (its lm_head is its own unless it says so)
    text["tie_word_embeddings"] = hf_config.get("tie_word_embeddings", False)
    return text


def load_processor(model_dir: Path, model_type: str) -> Any:
    """The checkpoint's processor; SmolVLM's without its video processor (transformers' needs
    torchvision; images need only the image processor)."""
    from transformers import AutoProcessor, SmolVLMProcessor

    if model_type != "smolvlm":
        return AutoProcessor.from_pretrained(str(model_dir))

    class ImageProcessor(SmolVLMProcessor):
        # ProcessorMixin loads and checks the parts this signature names
        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     image_seq_len: int = 169, chat_template: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len,
                             chat_template=chat_template, **kwargs)

    return ImageProcessor.from_pretrained(str(model_dir))


class Idefics3Tower(VisionTower):
    def __init__(self, model_dir: Path, model_type: str) -> None:
        super().__init__()
        from transformers import Idefics3Model, SmolVLMModel

        cls = SmolVLMModel if model_type == "smolvlm" else Idefics3Model
        self.model: Any = build_image_model(model_dir, cls, PARTS)
        self.image_token_id = image_token(model_dir)

    def encode(self, pixels: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        # every tile of every image in one batch: tiles share the processor's size
        values = torch.cat([p["pixel_values"] for p in pixels], dim=1)
        mask = torch.cat([p["pixel_attention_mask"] for p in pixels], dim=1)
        out = self.model.get_image_features(values, mask).pooler_output[0]
        tiles = [p["pixel_values"].shape[1] for p in pixels]
        per_tile = out.shape[0] // sum(tiles)
        return [e.float() for e in out.split([t * per_tile for t in tiles])]


def images(processor: Any, token_ids: list[int], outputs: dict[str, Any]
           ) -> list[tuple[int, int, dict[str, torch.Tensor]]]:
    """Each image's (offset, length, pixels) in a processed prompt: its tiles' placeholder runs
    up to the run after ``<global-img>``, and its tiles of the processor's tensors."""
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    global_token_id = processor.tokenizer.convert_tokens_to_ids(
        getattr(processor, "global_image_tag", None) or processor.global_image_token)
    runs = placeholder_runs(token_ids, image_token_id)
    images, first, tile = [], 0, 0
    for k, (start, stop) in enumerate(runs):
        if start > 0 and token_ids[start - 1] == global_token_id:
            tiles = k + 1 - first
            images.append((runs[first][0], stop - runs[first][0], {
                "pixel_values": outputs["pixel_values"][:, tile:tile + tiles],
                "pixel_attention_mask": outputs["pixel_attention_mask"][:, tile:tile + tiles]}))
            first, tile = k + 1, tile + tiles
    return images
