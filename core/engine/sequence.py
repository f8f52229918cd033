"""Engine state of one sequence: its tokens, KV blocks and progress (mutable, engine-owned)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from core.engine.params import SamplingParams
from core.models.vision.prompt import ImageSpan

# why a sequence ended: a stop token, stop string or complete grammar; max_tokens or the context
# length; or an abort (a cancelled or disconnected request)
FinishReason = Literal["stop", "length", "abort"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Constraint(Protocol):
    """A per-sequence restriction on the next token (a compiled grammar)."""

    def allowed(self, vocab_size: int) -> Any:
        """A (vocab,) boolean mask of the tokens allowed next."""

    def consume(self, token_id: int) -> None: ...

    @property
    def is_finished(self) -> bool:
        """True once the constraint is satisfied and allows nothing more."""


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the top alternatives at that position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Sequence:
    """One generation in flight. ``token_ids`` holds the prompt followed by the output."""

    seq_id: int
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    num_prompt_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # prefix hash of each full block
    num_cached_tokens: int = 0  # tokens whose keys and values are in the cache
    # prompt tokens whose keys and values the prefix cache held when the sequence was first
    # admitted (OpenAI's usage.prompt_tokens_details.cached_tokens); None before that
    num_prefix_cached_tokens: int | None = None
    finish_reason: FinishReason | None = None
    constraint: Constraint | None = None
    images: list[ImageSpan] = field(default_factory=list)
    rope_positions: Any = None  # M-RoPE: (3, prompt tokens) positions of the prompt
    rope_delta: int = 0  # M-RoPE: position - index of every token after the prompt

    def __post_init__(self) -> None:
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_cached_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def block_key(self, index: int, block_size: int) -> tuple[int, ...]:
        """What names block ``index`` in the prefix cache: its tokens, then the digests of the
        images it holds part of (placeholder tokens are the same for every image)."""
        start, stop = index * block_size, (index + 1) * block_size
        tokens = tuple(self.token_ids[start:stop])
        digests = tuple(i.digest for i in self.images if i.offset < stop and i.end > start)
        return tokens + digests if digests else tokens

    def chunk_stop(self, start: int, stop: int) -> int:
        """Where a chunk from ``start`` that would stop at ``stop`` stops so that no image is
        split between two steps: before the image, or (an image from ``start``) after it."""
        for image in self.images:
            if image.offset < stop < image.end:
                return image.offset if image.offset > start else image.end
        return stop
