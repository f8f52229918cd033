"""Responses API input items as the chat messages the shared chat handler takes.

``input`` is a string (one user message) or a list of items:

- messages: ``{"role", "content"}`` with or without ``"type": "message"``; role ``user``,
  ``system``, ``developer`` or ``assistant``; content a string or a list of ``input_text`` /
  ``output_text`` / ``refusal`` parts and, in user messages, image parts once
  :func:`core.chat.images.load_images` has loaded the ``input_image`` parts (the handler does:
  a message with images keeps its content a list of text and image parts). ``input_audio`` and
  ``input_file`` parts, and images a model cannot read, are a 400 naming the model's input
  modalities, never dropped;
- ``function_call`` items (``call_id``, ``name``, ``arguments``): an assistant tool call;
- ``function_call_output`` items (``call_id``, ``output``): the tool's result;
- ``mcp_call`` items (a remote MCP tool the server ran): the call and its output or error;
  ``mcp_list_tools``, ``mcp_approval_request`` and ``mcp_approval_response`` items carry no
  message (see :mod:`core.responses.mcp_session`).

A response's own output items are valid input items, so ``input=previous.output + [...]`` works
as well as ``previous_response_id``, and a stored conversation is just these messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.chat.images import MODALITY, is_image_part, media_error
from core.errors import InvalidRequestError

MESSAGE_ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
TEXT_ONLY = ("text",)
MCP_ITEMS = ("mcp_list_tools", "mcp_approval_request", "mcp_approval_response")


def input_messages(input: str | list[Any] | None, model_id: str,
                   modalities: Sequence[str] = TEXT_ONLY) -> list[dict[str, Any]]:
    """The chat messages of ``input`` for a model reading ``modalities``; a 400 naming the
    item for anything unusable."""
    if input is None:
        return []
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(input):
        if not isinstance(item, dict):
            raise InvalidRequestError(f"input[{i}] must be an object", param=f"input[{i}]")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(i, item, model_id, modalities))
        elif kind == "function_call":
            _add_call(messages, i, item)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", i),
                             "content": _content(f"input[{i}].output", item.get("output"),
                                                 model_id, modalities)})
        elif kind == "mcp_call":
            _add_mcp_call(messages, i, item)
        elif kind not in MCP_ITEMS:
            raise InvalidRequestError(
                f"input[{i}]: item type {kind!r} is not supported; use message, function_call, "
                "function_call_output or an mcp item", param=f"input[{i}].type",
                code="unsupported_parameter")
    return messages


def _message(i: int, item: dict[str, Any], model_id: str, modalities: Sequence[str]
             ) -> dict[str, Any]:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise InvalidRequestError(f"input[{i}].role must be one of {', '.join(MESSAGE_ROLES)}",
                                  param=f"input[{i}].role")
    return {"role": role, "content": _content(f"input[{i}].content", item.get("content"),
                                              model_id, modalities, images=role == "user")}


def _add_call(messages: list[dict[str, Any]], i: int, item: dict[str, Any]) -> None:
    """A function call joins the assistant message right before it (a reply may hold text and
    several calls), else starts one."""
    arguments = item.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise InvalidRequestError(f"input[{i}].arguments must be a JSON string",
                                  param=f"input[{i}].arguments")
    call = {"id": _string(item, "call_id", i), "type": "function",
            "function": {"name": _string(item, "name", i), "arguments": arguments}}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _add_mcp_call(messages: list[dict[str, Any]], i: int, item: dict[str, Any]) -> None:
    """A call the server ran: the assistant's call and the tool's answer (cut-off calls,
    never run, are left out)."""
    if item.get("status") == "incomplete":
        return
    call_id = _string(item, "id", i)
    _add_call(messages, i, {"call_id": call_id, "name": item.get("name"),
                            "arguments": item.get("arguments") or "{}"})
    error = item.get("error")
    output = f"Error: {error}" if error else str(item.get("output") or "")
    messages.append({"role": "tool", "tool_call_id": call_id, "content": output})


def _string(item: dict[str, Any], key: str, i: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"input[{i}].{key} must be a non-empty string",
                                  param=f"input[{i}].{key}")
    return value


def _content(where: str, content: Any, model_id: str, modalities: Sequence[str],
             images: bool = False) -> str | list[dict[str, Any]]:
    """A string, or a list of parts: text parts joined, unless loaded images are among them
    (``images``: where they may be); then the text and image parts in order."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where} must be a string or an array of parts", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if images and is_image_part(part):
            parts.append(part)
            continue
        if kind in MODALITY:
            raise media_error(f"{where}[{j}]", kind, model_id, modalities)
        if kind not in TEXT_PARTS or not isinstance(part.get(TEXT_PARTS[kind]), str):
            raise InvalidRequestError(f"{where}[{j}] must be an input_text or output_text part "
                                      f"with its text, not {kind!r}", param=f"{where}[{j}]")
        parts.append({"type": "text", "text": part[TEXT_PARTS[kind]]})
    if any(p["type"] == "image" for p in parts):
        return parts
    return "".join(p["text"] for p in parts)
