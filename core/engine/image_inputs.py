"""A step's image embeddings: which rows of the step's input embeddings are images'
placeholders, and the vision tower's rows that replace them (the model runner's helper).

A chunk never splits an image (:meth:`Sequence.chunk_stop`), so the first chunk that reaches
an image computes its embeddings, in one call of the tower for every image of the step, and the
same chunk consumes them: they are dropped after the step. A prompt read from the prefix cache
past an image never computes it; one read up to the middle of an image computes the image and
takes the embeddings of the placeholders after the cached part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.engine.sequence import ImageSpan, Sequence
from core.models.vision.tower import VisionTower


@dataclass
class StepImages:
    """The images a step's chunks reach: (image, its sequence, the chunk's first position,
    where the chunk's first token lies in the step)."""

    spans: list[tuple[ImageSpan, Sequence, int, int]] = field(default_factory=list)

    def add(self, seq: Sequence, start: int, stop: int, step_index: int) -> None:
        """Note the images of ``seq``'s chunk ``start``..``stop`` laid out from ``step_index``."""
        for image in seq.images:
            if image.offset < stop and image.end > start:
                if image.end > stop:  # never: chunks keep the rest of an image whole
                    raise RuntimeError("a chunk splits an image")
                self.spans.append((image, seq, start, step_index))

    def embeddings(self, tower: VisionTower, dtype: torch.dtype,
                   device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(step rows, (rows, hidden) embeddings) of every placeholder of the step's images,
        on ``device``, or None without images. Computes the missing embeddings in one call of
        the tower (the processor's tensors go to the tower's device)."""
        if not self.spans:
            return None
        missing = [image for image, _, _, _ in self.spans if image.embeds is None]
        if missing:
            where = next(tower.parameters()).device
            pixels = [{k: v.to(where) if isinstance(v, torch.Tensor) else v
                       for k, v in i.pixels.items()} for i in missing]
            for image, embeds in zip(missing, tower.encode(pixels), strict=True):
                image.embeds = embeds
        index: list[int] = []
        rows: list[torch.Tensor] = []
        for image, seq, start, first in self.spans:
            placeholders = [p for p in range(image.offset, image.end)
                            if seq.token_ids[p] == tower.image_token_id]
            if len(placeholders) != image.embeds.shape[0]:
                raise RuntimeError(f"an image has {len(placeholders)} placeholders but "
                                   f"{image.embeds.shape[0]} embeddings")
            new = [k for k, p in enumerate(placeholders) if p >= start]  # not in the cache
            index += [first + placeholders[k] - start for k in new]
            rows.append(image.embeds[new[0]:] if new else image.embeds[:0])
        return (torch.tensor(index, dtype=torch.long, device=device),
                torch.cat(rows).to(device=device, dtype=dtype))

    def release(self) -> None:
        """Drop the embeddings this step consumed (a recomputation after a preemption makes
        them again from the pixels)."""
        for image, _, _, _ in self.spans:
            image.embeds = None
