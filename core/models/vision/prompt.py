"""A prompt with images, as a vision model's processor makes it and the engine runs it (plain
data: the engine's sequences hold these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ImageSpan:
    """An image in a prompt: the ``length`` tokens from ``offset`` that its placeholders and
    their frame tokens take (Idefics3 interleaves tile markers), and what the model's vision
    tower reads to compute the placeholders' embeddings. Opaque to the engine but for
    ``digest``, which names the image in the prefix cache's keys of the blocks it touches."""

    offset: int
    length: int
    digest: int
    pixels: Any  # the processor's tensors of this image (the model runner's business)
    embeds: Any = None  # (placeholder tokens, hidden), computed when a chunk first needs them

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class MultimodalPrompt:
    """A prompt with images: its token ids (placeholders expanded), the images' spans, and for
    M-RoPE models the prompt's (3, len) positions and the shift of every later position."""

    token_ids: list[int]
    images: list[ImageSpan]
    rope_positions: Any = None
    rope_delta: int = 0
