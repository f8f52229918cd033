"""A vision-language checkpoint's image side, on transformers' own modules: the encoder and
projector of the checkpoint, without its language model (the engine runs that)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from core.errors import ModelLoadError


class VisionTower(nn.Module):
    """Turns images, as the model's processor made them, into the embeddings of their
    placeholder tokens. ``image_token_id``: the placeholder. ``bidirectional_images``: in
    prefill the tokens of an image's span attend to each other both ways (Gemma 3)."""

    image_token_id: int
    bidirectional_images = False

    def encode(self, pixels: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Each image's (placeholders, hidden) float32 embeddings, in one call of the encoder
        where their shapes allow."""
        raise NotImplementedError


def build_image_model(model_dir: Path, model_class: Callable[[Any], nn.Module],
                      parts: tuple[str, ...]) -> nn.Module:
    """transformers' ``model_class`` (an ``...Model`` with ``get_image_features``) for the
    checkpoint in ``model_dir``, its language model cut to no layers and a one-token
    vocabulary, and the weights of its ``parts`` (e.g. ``vision_model``, ``connector``) read
    from the checkpoint, whichever prefix it saved them under."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    text = config.text_config
    text.num_hidden_layers = 0
    text.vocab_size = 1
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = []
    model = model_class(config).eval().requires_grad_(False)
    wanted = model.state_dict()
    found: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name = key.removeprefix("model.")
                if name.split(".", 1)[0] in parts and name in wanted:
                    found[name] = f.get_tensor(key).to(wanted[name].dtype)
    missing = [k for k in wanted if k.split(".", 1)[0] in parts and k not in found]
    if missing:
        raise ModelLoadError(f"{model_dir}: the vision weights have no {missing[0]} "
                             f"({len(missing)} missing)")
    model.load_state_dict(found, strict=False)
    return model


def image_token(model_dir: Path, key: str = "image_token_id") -> int:
    """The placeholder token id a vision checkpoint's config names."""
    config = json.loads((model_dir / "config.json").read_text())
    value = config.get(key, config.get("image_token_index"))
    if not isinstance(value, int):
        raise ModelLoadError(f"{model_dir}/config.json names no {key}")
    return value


def placeholder_runs(token_ids: list[int], token_id: int) -> list[tuple[int, int]]:
    """(start, stop) of each run of ``token_id`` in ``token_ids``, in order."""
    runs: list[tuple[int, int]] = []
    for i, token in enumerate(token_ids):
        if token != token_id:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
