"""Well-formedness checks of OpenAI responses for the soak test: each returns the problems found
(an empty list when the response is well-formed)."""

from __future__ import annotations

import json
from typing import Any

FINISH_REASONS = {"stop", "length"}


def check_error(status: int, body: Any, headers: dict[str, str]) -> list[str]:
    """An error answer: OpenAI's envelope, and Retry-After on a 429."""
    problems = []
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        problems.append(f"HTTP {status}: not an OpenAI error envelope: {str(body)[:200]}")
    if status == 429 and not headers.get("retry-after", "").isdigit():
        problems.append("429 without a Retry-After header")
    return problems


def check_completion(body: Any, kind: str, n: int, max_tokens: int) -> list[str]:
    """A whole chat completion or text completion."""
    obj = "chat.completion" if kind == "chat" else "text_completion"
    if not isinstance(body, dict) or body.get("object") != obj:
        return [f"not a {obj}: {str(body)[:200]}"]
    problems = []
    choices = body.get("choices") or []
    if sorted(c.get("index") for c in choices) != list(range(n)):
        problems.append(f"choice indexes {[c.get('index') for c in choices]} for n={n}")
    for choice in choices:
        text = choice.get("message", {}).get("content") if kind == "chat" else choice.get("text")
        if not isinstance(text, str):
            problems.append(f"choice text is {type(text).__name__}")
        if choice.get("finish_reason") not in FINISH_REASONS:
            problems.append(f"finish_reason {choice.get('finish_reason')!r}")
    problems += _check_usage(body.get("usage"), n * max_tokens)
    return problems


def check_stream(events: list[str], kind: str, n: int, max_tokens: int) -> list[str]:
    """A whole SSE stream (``data:`` payloads in order), asked with include_usage."""
    if not events or events[-1] != "[DONE]":
        return ["the stream did not end with [DONE]"]
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    problems: list[str] = []
    chunks = []
    for data in events[:-1]:
        try:
            chunks.append(json.loads(data))
        except json.JSONDecodeError:
            return [f"a chunk is not JSON: {data[:100]}"]
    if any("error" in c for c in chunks):
        return [f"error event: {next(c for c in chunks if 'error' in c)}"]
    if len({c.get("id") for c in chunks}) != 1 or any(c.get("object") != obj for c in chunks):
        problems.append("chunks differ in id or object")
    finishes: dict[int, int] = {}
    for chunk in chunks[:-1]:
        for choice in chunk.get("choices", []):
            if choice.get("finish_reason") is not None:
                if choice["finish_reason"] not in FINISH_REASONS:
                    problems.append(f"finish_reason {choice['finish_reason']!r}")
                finishes[choice["index"]] = finishes.get(choice["index"], 0) + 1
    if finishes != {i: 1 for i in range(n)}:
        problems.append(f"finish reasons per choice {finishes} for n={n}")
    last = chunks[-1] if chunks else {}
    if last.get("choices") != []:
        problems.append("the last chunk is not the usage chunk")
    problems += _check_usage(last.get("usage"), n * max_tokens)
    return problems


def _check_usage(usage: Any, max_completion: int) -> list[str]:
    if not isinstance(usage, dict):
        return ["no usage"]
    prompt, completion = usage.get("prompt_tokens", -1), usage.get("completion_tokens", -1)
    if prompt <= 0 or not 0 <= completion <= max_completion:
        return [f"usage out of range: {usage}"]
    if usage.get("total_tokens") != prompt + completion:
        return [f"usage does not add up: {usage}"]
    return []
