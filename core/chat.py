"""Chat messages as OpenAI clients send them, normalized for a chat template."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from core.errors import InvalidRequestError

ROLES = ("system", "developer", "user", "assistant", "tool")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten content (a string or an array of text parts) to a string.

    ``developer`` becomes ``system`` (templates know only the latter); assistant tool calls and
    tool results are kept so templates that support tools can render them.
    """
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    return [_normalize(i, m) for i, m in enumerate(messages)]


def _normalize(index: int, message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(f"messages[{index}].role must be one of {', '.join(ROLES)}",
                                  param=f"messages[{index}].role")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                           "content": _text(index, message.get("content"))}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c) for c in message["tool_calls"]]
    if role == "tool" and message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("name"):
        out["name"] = message["name"]
    return out


def _text(index: int, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequestError(
                    f"messages[{index}].content: part type {kind!r} is not supported by this "
                    "text-only model", param=f"messages[{index}].content")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise InvalidRequestError(f"messages[{index}].content must be a string or an array of parts",
                              param=f"messages[{index}].content")


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            function["arguments"] = json.loads(arguments)
    return {"id": call.get("id"), "type": "function", "function": function}
