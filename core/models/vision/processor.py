"""A vision checkpoint's processor: renders a chat with images through the chat template,
expands each image's placeholder as the checkpoint does (tiles, grids) and makes its pixel
tensors, into a :class:`MultimodalPrompt` the engine runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from core.errors import InvalidRequestError, ModelLoadError
from core.models import vision
from core.models.vision.prompt import ImageSpan, MultimodalPrompt


class Image(Protocol):
    """An image as the front ends decoded it (core.chat.images.ImageData)."""

    @property
    def image(self) -> Any:
        """The decoded PIL image (RGB)."""

    @property
    def digest(self) -> str:
        """sha256 hex of the image's bytes."""


class ImagePrompter:
    """The processor of the vision checkpoint in ``model_dir``."""

    def __init__(self, model_dir: Path, model_type: str) -> None:
        found = vision.family(model_type)
        if found is None:
            raise ModelLoadError(f"{model_type!r} is not a vision family")
        self.family = found
        self.processor = load_processor(model_dir, model_type)

    def prompt(self, text: str, images: Sequence[Image]) -> MultimodalPrompt:
        """The prompt ``text`` (the chat template's, one placeholder an image, in order) with
        ``images`` expanded and processed."""
        try:
            outputs = self.processor(text=text, images=[i.image for i in images] or None,
                                     return_tensors="pt", add_special_tokens=False)
        except Exception as exc:  # the processor refuses what it cannot read
            raise InvalidRequestError(f"the model's processor rejected the images: {exc}",
                                      param="messages") from exc
        token_ids = [int(t) for t in outputs["input_ids"][0]]
        found = self.family.images(self.processor, token_ids, outputs) if images else []
        if len(found) != len(images):
            raise InvalidRequestError(f"the prompt holds {len(found)} image placeholders for "
                                      f"{len(images)} images", param="messages")
        spans = [ImageSpan(offset, length, int(image.digest[:16], 16), pixels)
                 for (offset, length, pixels), image in zip(found, images, strict=True)]
        rope = getattr(self.family, "rope_positions", None)
        if rope is None or not images:
            return MultimodalPrompt(token_ids, spans)
        positions, delta = rope(self.processor, token_ids, outputs)
        return MultimodalPrompt(token_ids, spans, positions, delta)


def load_processor(model_dir: Path, model_type: str) -> Any:
    """The processor of the vision checkpoint in ``model_dir``: the family's own
    (``load_processor``) where it defines one, else transformers' AutoProcessor."""
    from transformers import AutoProcessor

    found = vision.family(model_type)
    load = getattr(found, "load_processor", None)
    try:
        return load(model_dir, model_type) if load is not None \
            else AutoProcessor.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many kinds here
        raise ModelLoadError(f"cannot load the processor in {model_dir}: {exc}") from exc
