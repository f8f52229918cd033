"""Qwen2-VL and Qwen2.5-VL: a ViT over 14-pixel patches (Qwen2.5-VL's attending within
windows in most layers) whose 2 x 2 neighbouring patches merge into one placeholder, and a
Qwen2 language model with multimodal rotary (M-RoPE): each token has a time, a height and a
width position; an image's placeholders take their row and column in the image's grid from the
position after the text before it, and the text after an image goes on from its largest.
An image is one run of ``<|image_pad|>`` placeholders (between ``<|vision_start|>`` and
``<|vision_end|>`` in the chat templates). Videos are not read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.errors import ModelLoadError
from core.models.vision.tower import VisionTower, build_image_model, image_token

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
PARTS = ("visual",)
MROPE_SECTION = [16, 24, 24]  # transformers' when a config names none


def text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    # checkpoints on the Hub are flat (the language model's fields at the top level);
    # transformers 5 saves them under text_config
    nested = dict(hf_config.get("text_config") or {})
    text = {k: v for k, v in hf_config.items() if k not in ("text_config", "vision_config")}
    text |= nested
    if text.get("use_sliding_window"):
        # the engine's windows count positions, and M-RoPE's run behind the token indices
        raise ModelLoadError("sliding-window attention with M-RoPE is not supported")
    text["model_type"] = "qwen2"
    # the whole model's tie decides (transformers 4 saved it in text_config)
    text["tie_word_embeddings"] = bool(hf_config.get("tie_word_embeddings")
                                       or nested.get("tie_word_embeddings"))
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope.setdefault("rope_theta", text.get("rope_theta", 1e6))  # Qwen2VLTextConfig's default
    rope.setdefault("mrope_section", MROPE_SECTION)
    text["rope_parameters"] = rope
    return text


def load_processor(model_dir: Path, model_type: str) -> Any:
    """The checkpoint's processor without its video processor: transformers' Qwen2-VL
    processors load one, which needs torchvision; images need only the image processor."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    base: Any = Qwen2VLProcessor if model_type == "qwen2_vl" else Qwen2_5_VLProcessor

    class ImageProcessor(base):
        # ProcessorMixin loads and checks the parts this signature names
        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template,
                             **kwargs)

    return ImageProcessor.from_pretrained(str(model_dir))


class Qwen2VLTower(VisionTower):
    def __init__(self, model_dir: Path, model_type: str) -> None:
        super().__init__()
        from transformers import Qwen2_5_VLModel, Qwen2VLModel

        cls = Qwen2VLModel if model_type == "qwen2_vl" else Qwen2_5_VLModel
        self.model: Any = build_image_model(model_dir, cls, PARTS)
        self.image_token_id = image_token(model_dir)

    def encode(self, pixels: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        # every image's patches in one call: attention stays within each image's (window's)
        values = torch.cat([p["pixel_values"] for p in pixels])
        grids = torch.cat([p["image_grid_thw"] for p in pixels])
        out = self.model.get_image_features(values, grids).pooler_output  # one an image
        return [e.float() for e in out]


def _runs(processor: Any, token_ids: list[int], outputs: dict[str, Any]
          ) -> list[tuple[int, int, tuple[int, int, int]]]:
    """Each image's (offset, placeholders, (t, h, w) merged grid), in order, as far as its
    placeholders are one run."""
    merge = processor.image_processor.merge_size
    where = [i for i, t in enumerate(token_ids) if t == processor.image_token_id]
    runs, at = [], 0
    for t, h, w in outputs["image_grid_thw"].tolist():
        count = t * h * w // merge**2
        run = where[at:at + count]
        if len(run) < count or run[-1] - run[0] != count - 1:
            break
        runs.append((run[0], count, (t, h // merge, w // merge)))
        at += count
    return runs


def images(processor: Any, token_ids: list[int], outputs: dict[str, Any]
           ) -> list[tuple[int, int, dict[str, torch.Tensor]]]:
    """Each image's (offset, length, pixels) in a processed prompt: its run of placeholders
    and its patches (``t * h * w`` rows of ``pixel_values``) with its grid."""
    found, patch = [], 0
    grids, values = outputs["image_grid_thw"], outputs["pixel_values"]
    for k, (offset, count, _) in enumerate(_runs(processor, token_ids, outputs)):
        patches = int(grids[k].prod())
        found.append((offset, count, {"pixel_values": values[patch:patch + patches],
                                      "image_grid_thw": grids[k:k + 1]}))
        patch += patches
    return found


def rope_positions(processor: Any, token_ids: list[int], outputs: dict[str, Any]
                   ) -> tuple[torch.Tensor, int]:
    """The prompt's (3, len) M-RoPE positions (time, height, width) and how far every later
    token's position is from its index (as transformers' ``get_rope_index`` for images)."""
    rows: list[list[int]] = [[], [], []]
    pos = done = 0
    for offset, count, (t, h, w) in _runs(processor, token_ids, outputs):
        for row in rows:  # the text before the image
            row += range(pos, pos + offset - done)
        pos += offset - done
        for i in range(t):
            for j in range(h):
                rows[0] += [pos + i] * w
                rows[1] += [pos + j] * w
                rows[2] += range(pos, pos + w)
        pos, done = pos + max(h, w), offset + count
    for row in rows:
        row += range(pos, pos + len(token_ids) - done)
    positions = torch.tensor(rows, dtype=torch.long)
    return positions, int(positions.max()) + 1 - len(token_ids)
