"""Chat messages as OpenAI clients send them, normalized for a chat template.

A message's content becomes one string (its text parts joined), unless it holds images: then it
stays a list of ``{"type": "text", "text"}`` parts and the loaded image parts of
:mod:`core.chat.images` (``{"type": "image", "image": ImageData, "detail"}``), in order.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

from core.chat.images import is_image_part
from core.errors import InvalidRequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 2048
IMAGE_TYPES = ("image_url", "input_image", "image")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten content (a string or an array of text parts) to a string; a
    user message's loaded image parts keep its content a list of parts (see the module
    docstring; :func:`core.chat.images.load_images` loads them).

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
                           "content": _content(index, role, message.get("content"))}
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


def _content(index: int, role: str, content: Any) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [_part(index, j, role, part) for j, part in enumerate(content)]
        if any(isinstance(p, dict) for p in parts):
            return [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
        return "".join(cast(list[str], parts))
    raise InvalidRequestError(f"messages[{index}].content must be a string or an array of parts",
                              param=f"messages[{index}].content")


def _part(index: int, j: int, role: str, part: Any) -> str | dict[str, Any]:
    """A text part's text, or a loaded image part (of a user message)."""
    where = f"messages[{index}].content[{j}]"
    if role == "user" and is_image_part(part):
        return {"type": "image", "image": part["image"], "detail": part.get("detail", "auto")}
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    if kind in IMAGE_TYPES:
        raise InvalidRequestError(f"{where}: images are read only in user messages, once "
                                  "loaded (core.chat.images.load_images)", param=where)
    if kind != "text":
        raise InvalidRequestError(f"{where}: part type {kind!r} is not supported; use text or "
                                  "image_url parts", param=where)
    text = part.get("text", "")
    if not isinstance(text, str):
        raise InvalidRequestError(f"{where}: a text part's 'text' must be a string", param=where)
    return text


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
