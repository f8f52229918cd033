"""What the engine hands back to a front end for each request, step by step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.engine.params import SamplingParams
from core.engine.sequence import FinishReason, TokenLogprob
from core.errors import InferError
from core.models.vision.prompt import MultimodalPrompt

# what a request's outputs report: the engine's reason, or tool_calls once the chat layer has
# parsed tool calls from the text (it rewrites the last output's reason)
OutputFinishReason = Literal[FinishReason, "tool_calls"]


@dataclass(frozen=True)
class EngineRequest:
    """One generation: prompt token ids plus sampling parameters and stop rules; ``images``:
    the prompt's images, where it has any (its ``token_ids`` are ``prompt_token_ids``)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    truncate: bool = False
    images: MultimodalPrompt | None = None


@dataclass
class RequestOutput:
    """A step's worth of progress for one request.

    ``text`` is the new text since the previous output (never a broken character or part of a
    stop string); ``token_ids`` and ``logprobs`` the new tokens. The last output of a request has
    ``finish_reason`` set (``stop`` or ``length``), or ``error`` set if the engine failed.
    """

    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: OutputFinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens read from the prefix cache, not computed
    num_output_tokens: int = 0
    error: InferError | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for /health, metrics and tests."""

    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_preemptions: int
    num_aborted: int
    num_finished: int
    is_alive: bool
    error: str | None
    num_prefix_queries: int = 0  # prompt tokens admitted
    num_prefix_hits: int = 0  # of which read from the prefix cache
    num_rejected: int = 0  # refused with 429: the queue was full
    num_timed_out: int = 0  # ended by the request timeout
    num_failed: int = 0  # ended alone by an error in their own processing
