"""A response's output items, built from its chat deltas together with the Responses API
events that build them.

Fed the deltas of one choice (:meth:`Generation.chat_deltas`), :class:`ResponseOutput` keeps
the output items (``message`` items with one ``output_text`` part, ``function_call`` items) and
returns, for each delta, the events a stream sends: ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``... ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, and for calls
``response.function_call_arguments.delta`` / ``.done``. A call of a remote MCP tool (named in
``mcp_tools``) is an ``mcp_call`` item (``response.mcp_call.in_progress``,
``response.mcp_call_arguments.delta`` / ``.done``; it stays open in :attr:`pending` until the
handler has run it: :meth:`finish_mcp_call`), or an ``mcp_approval_request`` item when the tool
needs approval. Events carry no ``sequence_number``;
the stream numbers them. A whole response is built by the same deltas, so a streamed response
and its final object always agree.
"""

from __future__ import annotations

import uuid
from typing import Any

from core.chat.output_parser import ChatDelta, ToolCall
from core.chat.tools import CALL_OPEN

Event = dict[str, Any]


class ResponseOutput:
    """The output items of one response (see the module docstring)."""

    def __init__(self, call_open: str = CALL_OPEN,
                 mcp_tools: dict[str, tuple[str, bool]] | None = None) -> None:
        """``call_open``: the marker of the model's tool calls (see ToolFormat);
        ``mcp_tools``: tool name -> (server label, whether a call needs approval)."""
        self.call_open = call_open
        self.mcp_tools = mcp_tools or {}
        self.pending: list[dict[str, Any]] = []  # mcp_call items whose arguments are done
        self.items: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None  # the open message item
        self._call: dict[str, Any] | None = None  # the open function_call item
        self._call_index = -1  # its index among the choice's tool calls
        self._held = ""  # whitespace that may yet start a message

    @property
    def text(self) -> str:
        """What the SDK's ``output_text`` gives: every output_text part, joined."""
        return "".join(part["text"] for item in self.items if item["type"] == "message"
                       for part in item["content"] if part["type"] == "output_text")

    def feed(self, delta: ChatDelta, finished: bool = False) -> list[Event]:
        """Take one delta; the events it adds. Arguments of the open call come first, then
        text, then calls that start. On the last delta, a call that was cut off (the parser
        hands its text back as content) is closed as incomplete and its text dropped."""
        events: list[Event] = []
        content = delta.content
        opening = self.call_open
        cut = finished and bool(opening) and opening in content \
            and (self._call is not None or bool(delta.new_calls))
        if cut:
            content = content[:content.index(opening)]
        new = {c.index for c in delta.new_calls}
        for index, fragment in delta.arguments:
            if index not in new and index == self._call_index:
                events += self._arguments(fragment)
        if content:
            events += self._text(content)
        for call in delta.new_calls:
            events += self._open_call(call)
            for index, fragment in delta.arguments:
                if index == call.index:
                    events += self._arguments(fragment)
        if cut:
            events += self._close_call("incomplete")
        return events

    def finish(self, finish_reason: str | None) -> list[Event]:
        """Close what is open (a message cut by the token limit is ``incomplete``); a response
        with no output at all gets one empty message."""
        status = "incomplete" if finish_reason == "length" else "completed"
        events = self._close_call(status) + self._close_message(status)
        if not self.items:
            text, self._held = self._held, ""
            events += self._open_message()
            if text:
                events += self._text(text)
            events += self._close_message(status)
        return events

    def _text(self, text: str) -> list[Event]:
        if self._message is None:
            # whitespace between or after calls (parallel calls are newline-separated) opens no
            # message: it is held until real text follows, and dropped if none does
            self._held += text
            if not self._held.strip():
                return []
            text, self._held = self._held, ""
        events = self._close_call("completed")
        if self._message is None:
            events += self._open_message()
        item = self._message
        assert item is not None
        item["content"][0]["text"] += text
        return [*events, {"type": "response.output_text.delta", **self._where(item),
                          "content_index": 0, "delta": text, "logprobs": []}]

    def _open_message(self) -> list[Event]:
        item: dict[str, Any] = {"id": f"msg_{uuid.uuid4().hex}", "type": "message",
                                "status": "in_progress", "role": "assistant", "content": []}
        self._message = item
        self.items.append(item)
        part = _text_part("")
        added = {"type": "response.output_item.added", "output_index": len(self.items) - 1,
                 "item": {**item, "content": []}}
        item["content"].append(part)
        return [added, {"type": "response.content_part.added", **self._where(item),
                        "content_index": 0, "part": dict(part)}]

    def _close_message(self, status: str) -> list[Event]:
        item, self._message = self._message, None
        if item is None:
            return []
        item["status"] = status
        part = item["content"][0]
        return [{"type": "response.output_text.done", **self._where(item), "content_index": 0,
                 "text": part["text"], "logprobs": []},
                {"type": "response.content_part.done", **self._where(item), "content_index": 0,
                 "part": dict(part)},
                {"type": "response.output_item.done", "output_index": self._index(item),
                 "item": _copy(item)}]

    def _open_call(self, call: ToolCall) -> list[Event]:
        events = self._close_call("completed") + self._close_message("completed")
        item: dict[str, Any]
        if call.name in self.mcp_tools:
            label, approval = self.mcp_tools[call.name]
            item = {"id": f"mcpr_{uuid.uuid4().hex}", "type": "mcp_approval_request",
                    "server_label": label, "name": call.name, "arguments": ""} if approval \
                else {"id": f"mcp_{uuid.uuid4().hex}", "type": "mcp_call", "status":
                      "in_progress", "server_label": label, "name": call.name, "arguments": "",
                      "output": None, "error": None}
        else:
            item = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call",
                    "status": "in_progress", "call_id": call.id, "name": call.name,
                    "arguments": ""}
        self._call, self._call_index = item, call.index
        self.items.append(item)
        events.append({"type": "response.output_item.added",
                       "output_index": len(self.items) - 1, "item": dict(item)})
        if item["type"] == "mcp_call":
            events.append({"type": "response.mcp_call.in_progress", **self._where(item)})
        return events

    def _arguments(self, fragment: str) -> list[Event]:
        item = self._call
        if item is None or not fragment:
            return []
        item["arguments"] += fragment
        if item["type"] == "mcp_approval_request":
            return []
        kind = "mcp_call" if item["type"] == "mcp_call" else "function_call"
        return [{"type": f"response.{kind}_arguments.delta", **self._where(item),
                 "delta": fragment}]

    def _close_call(self, status: str) -> list[Event]:
        item, self._call = self._call, None
        if item is None:
            return []
        done = {"type": "response.output_item.done", "output_index": self._index(item),
                "item": dict(item)}
        if item["type"] == "mcp_approval_request":
            return [done]
        if item["type"] == "mcp_call":
            if status != "completed":  # cut off: never run
                item.update(status="incomplete", error="the call was cut off")
                return [{**done, "item": dict(item)}]
            self.pending.append(item)
            return [{"type": "response.mcp_call_arguments.done", **self._where(item),
                     "arguments": item["arguments"]}]
        item["status"] = status
        return [{"type": "response.function_call_arguments.done", **self._where(item),
                 "name": item["name"], "arguments": item["arguments"]},
                {**done, "item": dict(item)}]

    def end_round(self) -> list[Event]:
        """A generation of a tool loop ended: a call still open is whole (a cut-off one was
        closed by the last delta), so its arguments are done and, for MCP, it is pending."""
        return self._close_call("completed")

    def finish_mcp_call(self, item: dict[str, Any], output: str | None, error: str | None
                        ) -> list[Event]:
        """Close a pending ``mcp_call`` item with its tool's output or error."""
        self.pending.remove(item)
        failed = error is not None
        item.update(output=output, error=error, status="failed" if failed else "completed")
        return [{"type": f"response.mcp_call.{'failed' if failed else 'completed'}",
                 **self._where(item)},
                {"type": "response.output_item.done", "output_index": self._index(item),
                 "item": dict(item)}]

    def add_item(self, item: dict[str, Any]) -> list[Event]:
        """A whole item the handler made (mcp_list_tools, a call run on approval): its
        events as a stream shows them."""
        events = self._close_call("completed") + self._close_message("completed")
        self.items.append(item)
        index = len(self.items) - 1
        added = {"type": "response.output_item.added", "output_index": index,
                 "item": {**item, "tools": []} if item["type"] == "mcp_list_tools"
                 else dict(item)}
        return [*events, added]

    def item_done(self, item: dict[str, Any]) -> list[Event]:
        return [{"type": "response.output_item.done", "output_index": self._index(item),
                 "item": dict(item)}]

    def event(self, kind: str, item: dict[str, Any]) -> Event:
        """An item's own event (``response.mcp_list_tools.completed``...)."""
        return {"type": kind, **self._where(item)}

    def _where(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item["id"], "output_index": self._index(item)}

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, x in enumerate(self.items) if x is item)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "content": [dict(part) for part in item["content"]]}
