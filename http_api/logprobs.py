"""Logprobs in the two OpenAI shapes: chat (``content`` list) and legacy completions."""

from __future__ import annotations

from typing import Any

from core.engine.sequence import TokenLogprob
from core.models.tokenizer import Tokenizer


def chat_logprobs(tokenizer: Tokenizer, items: list[TokenLogprob]) -> dict[str, Any]:
    """``{"content": [{token, logprob, bytes, top_logprobs: [...]}, ...], "refusal": null}``."""
    return {"content": [_chat_entry(tokenizer, lp) for lp in items], "refusal": None}


def _chat_entry(tokenizer: Tokenizer, lp: TokenLogprob) -> dict[str, Any]:
    entry = _token(tokenizer, lp.token_id, lp.logprob)
    entry["top_logprobs"] = [_token(tokenizer, t, v) for t, v in lp.top]
    return entry


def _token(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.token_text(token_id)
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode())}


def completion_logprobs(tokenizer: Tokenizer, items: list[TokenLogprob], text_offset: int
                        ) -> dict[str, Any]:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (legacy shape)."""
    tokens = [tokenizer.token_text(lp.token_id) for lp in items]
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [max(lp.logprob, -9999.0) for lp in items],
        "top_logprobs": [{tokenizer.token_text(t): max(v, -9999.0) for t, v in lp.top}
                         for lp in items],
        "text_offset": offsets,
    }
