"""A step's image embeddings: which rows of the step's input embeddings are images'
placeholders, and the vision tower's rows that replace them (the model runner's helper).

A chunk never splits an image (:meth:`Sequence.chunk_stop`), so the first chunk that reaches
an image computes its embeddings, in one call of the tower for every image of the step, and the
same chunk consumes them: they are dropped after the step. A prompt read from the prefix cache
past an image never computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.engine.sequence import ImageSpan, Sequence
from core.models.vision.tower import VisionTower


@dataclass
class StepImages:
    """The images a step's chunks cover: (span, index of the span's first token in the step)."""

    spans: list[tuple[ImageSpan, int, Sequence]] = field(default_factory=list)

    def add(self, seq: Sequence, start: int, stop: int, step_index: int) -> None:
        """Note the images of ``seq``'s chunk ``start``..``stop`` laid out from ``step_index``."""
        for image in seq.images:
            if start <= image.offset and image.end <= stop:
                self.spans.append((image, step_index + image.offset - start, seq))
            elif image.offset < stop and image.end > start:  # never: chunks keep images whole
                raise RuntimeError("a chunk splits an image")

    def embeddings(self, tower: VisionTower, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(step rows, (rows, hidden) embeddings) of every placeholder of the step's images,
        or None without images. Computes the missing embeddings in one call of the tower."""
        if not self.spans:
            return None
        missing = [image for image, _, _ in self.spans if image.embeds is None]
        if missing:
            for image, embeds in zip(missing, tower.encode([i.pixels for i in missing]),
                                     strict=True):
                image.embeds = embeds
        index: list[int] = []
        rows: list[torch.Tensor] = []
        for image, first, seq in self.spans:
            tokens = seq.token_ids[image.offset:image.end]
            placeholders = [first + j for j, t in enumerate(tokens) if t == tower.image_token_id]
            if len(placeholders) != image.embeds.shape[0]:
                raise RuntimeError(f"an image has {len(placeholders)} placeholders but "
                                   f"{image.embeds.shape[0]} embeddings")
            index += placeholders
            rows.append(image.embeds)
        return torch.tensor(index, dtype=torch.long), torch.cat(rows).to(dtype)

    def release(self) -> None:
        """Drop the embeddings this step consumed (a recomputation after a preemption makes
        them again from the pixels)."""
        for image, _, _ in self.spans:
            image.embeds = None
