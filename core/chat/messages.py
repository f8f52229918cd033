"""Chat messages as OpenAI clients send them, normalized for a chat template."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from core.errors import InvalidRequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 2048


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten content (a string or an array of text parts) to a string.

    ``developer`` becomes ``system`` (templates know only the latter); assistant tool calls and
    tool results are kept so templates that support tools can render them.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequestError(f"'messages' has {len(messages)} messages; at most "
                                  f"{MAX_MESSAGES} per request", param="messages")
    return [_normalize(i, m) for i, m in enumerate(messages)]


def _normalize(index: int, message: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"messages[{index}] must be an object with a role",
                                  param=f"messages[{index}]")
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(f"messages[{index}].role must be one of {', '.join(ROLES)}",
                                  param=f"messages[{index}].role")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                           "content": _text(index, message.get("content"))}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(index, message["tool_calls"])
    if role == "tool" and message.get("tool_call_id"):
        out["tool_call_id"] = _string(index, "tool_call_id", message["tool_call_id"])
    if message.get("name"):
        out["name"] = _string(index, "name", message["name"])
    return out


def _string(index: int, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"messages[{index}].{key} must be a string",
                                  param=f"messages[{index}].{key}")
    return value


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
            text = part.get("text", "")
            if not isinstance(text, str):
                raise InvalidRequestError(f"messages[{index}].content: a text part's 'text' must "
                                          "be a string", param=f"messages[{index}].content")
            parts.append(text)
        return "".join(parts)
    raise InvalidRequestError(f"messages[{index}].content must be a string or an array of parts",
                              param=f"messages[{index}].content")


def _tool_calls(index: int, calls: Any) -> list[dict[str, Any]]:
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function") or {}, dict) for c in calls):
        raise InvalidRequestError(f"{where} must be a list of {{id, type, function}} objects",
                                  param=where)
    return [_tool_call(c) for c in calls]


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            function["arguments"] = json.loads(arguments)
    return {"id": call.get("id"), "type": "function", "function": function}
