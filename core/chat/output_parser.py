"""Splitting generated chat text into reasoning, content and tool calls, incrementally.

Fed the text deltas of one choice, :class:`ChatOutputParser` returns what may be shown now:
``<think>...</think>`` at the start goes to ``reasoning``; calls in the model's
:class:`~core.chat.tools.ToolFormat` become calls (Hermes' ``<tool_call>{"name": ..,
"arguments": ..}</tool_call>`` streams its id and name, then argument text fragments; the
other formats' calls come whole, as each one's JSON completes); everything else is
``content``. Text that might be the start of a tag is held back until it is clear.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from core.chat.tools import CALL_CLOSE, CALL_OPEN, HERMES, ToolFormat

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_CALL_TAIL = "}" + CALL_CLOSE


@dataclass
class ToolCall:
    index: int
    name: str
    arguments: str = ""
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass
class ChatDelta:
    """What one step added: text, reasoning, calls that started, argument fragments."""

    content: str = ""
    reasoning: str = ""
    new_calls: list[ToolCall] = field(default_factory=list)
    arguments: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.new_calls or self.arguments)


class ChatOutputParser:
    """Incremental parser for one choice's text (see the module docstring)."""

    def __init__(self, parse_tool_calls: bool, fmt: ToolFormat = HERMES) -> None:
        self._tools = parse_tool_calls
        self._fmt = fmt
        self._opening = ""  # the marker that opened the calls being read (block formats)
        self._after_call = False  # a block format's call just ended
        self._after_hermes_call = False
        self._buffer = ""
        self._state = "start"
        self.calls: list[ToolCall] = []
        self._call_text = ""
        self._args_sent = 0

    def feed(self, text: str) -> ChatDelta:
        self._buffer += text
        delta = ChatDelta()
        while self._step(delta):
            pass
        return delta

    def finish(self) -> ChatDelta:
        """Release what is held back once generation has ended."""
        delta = self.feed("")
        if self._state == "call" and self._fmt is HERMES:  # cut off inside a call: show it as
            self.calls.pop()  # text, not a broken call
            delta.content += CALL_OPEN + self._call_text
        elif self._state == "call":  # what follows the last whole call, or a cut-off one
            delta.content += self._opening + self._call_text if self._call_text.strip() else ""
        elif self._state == "reasoning":
            delta.reasoning += self._buffer
        else:
            delta.content += self._buffer
        self._buffer = ""
        return delta

    def _step(self, delta: ChatDelta) -> bool:
        """Consume what can be decided from the buffer; True if another pass may progress."""
        if self._state == "start":
            stripped = self._buffer.lstrip()
            if stripped.startswith(THINK_OPEN):
                self._buffer, self._state = stripped[len(THINK_OPEN):], "reasoning"
                return True
            if THINK_OPEN.startswith(stripped) and stripped:
                return False
            if self._tools and self._fmt.bare and not stripped:
                return False
            if self._tools and self._fmt.bare and stripped.startswith("{"):  # a bare call
                self._buffer, self._state, self._opening = stripped, "call", ""
                self._call_text = ""
                return True
            self._state = "content"
            return True
        if self._state == "reasoning":
            return self._until(THINK_CLOSE, delta, "reasoning", "content")
        if self._state == "content":
            if self._after_hermes_call:  # newlines between calls are no content
                self._buffer = self._buffer.lstrip("\n")
                if not self._buffer:
                    return False
                self._after_hermes_call = False
            if not self._tools:
                delta.content, self._buffer = delta.content + self._buffer, ""
                return False
            return self._until(self._fmt.open, delta, "content", "call")
        if self._fmt is HERMES:
            return self._in_call(delta)
        return self._in_block(delta)

    def _until(self, tag: str, delta: ChatDelta, field_name: str, next_state: str) -> bool:
        index = self._buffer.find(tag)
        if index >= 0:
            self._emit(delta, field_name, self._buffer[:index])
            self._buffer = self._buffer[index + len(tag):]
            self._state = next_state
            if next_state == "call" and self._fmt is HERMES:
                self.calls.append(ToolCall(len(self.calls), ""))
                self._call_text, self._args_sent = "", 0
            elif next_state == "call":
                self._call_text, self._opening = "", tag
            return True
        keep = _partial_suffix(self._buffer, tag)
        self._emit(delta, field_name, self._buffer[:len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return False

    def _in_call(self, delta: ChatDelta) -> bool:
        self._call_text += self._buffer
        self._buffer = ""
        call = self.calls[-1]
        head = _CALL_HEAD.match(self._call_text)
        if head is None:
            return False
        if not call.name:
            call.name = head.group(1)
            delta.new_calls.append(call)
        args = self._call_text[head.end():]
        end = args.find(_CALL_TAIL)
        ready = args[:end] if end >= 0 else args[:max(0, len(args) - len(_CALL_TAIL))]
        if len(ready) > self._args_sent:
            delta.arguments.append((call.index, ready[self._args_sent:]))
            self._args_sent = len(ready)
        call.arguments = ready
        if end < 0:
            return False
        self._buffer = args[end + len(_CALL_TAIL):]
        self._state, self._after_hermes_call = "content", True
        return True

    def _in_block(self, delta: ChatDelta) -> bool:
        """The calls after a block format's marker: a JSON list, or objects separated by
        ``;``; each call is taken once its JSON is whole. JSON that is not a call is text."""
        self._call_text += self._buffer
        self._buffer = ""
        text = self._call_text.lstrip()
        if not text:
            return False
        if self._after_call:  # Llama 3's calls go on after a ";", or the answer does
            if not text.startswith(";"):
                self._call_text, self._buffer, self._state = "", text, "content"
                self._after_call = False
                return True
            self._after_call = False
            text = text[1:].lstrip()
            self._call_text = text
            if not text:
                return False
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            if text[0] in "[{":
                return False  # unfinished (or broken: finish shows it as text)
            value, end = None, 0
        found = value if self._fmt.array and isinstance(value, list) else [value]
        if not found or not all(self._is_call(v) for v in found):
            delta.content += self._opening + self._call_text
            self._call_text, self._state = "", "content"
            return False
        for value in found:
            self._add_call(delta, value)
        self._opening, rest = "", text[end:]
        if self._fmt.array:
            self._call_text, self._buffer, self._state = "", rest, "content"
            return True
        self._call_text, self._after_call = rest, True  # another call may follow
        return True

    def _is_call(self, value: object) -> bool:
        return isinstance(value, dict) and isinstance(value.get("name"), str) \
            and (self._fmt.args_key in value or "arguments" in value)

    def _add_call(self, delta: ChatDelta, value: dict[str, object]) -> None:
        args = value.get(self._fmt.args_key, value.get("arguments"))
        text = args if isinstance(args, str) else json.dumps(args)
        call = ToolCall(len(self.calls), str(value["name"]), text)
        self.calls.append(call)
        delta.new_calls.append(call)
        delta.arguments.append((call.index, text))

    @staticmethod
    def _emit(delta: ChatDelta, field_name: str, text: str) -> None:
        setattr(delta, field_name, getattr(delta, field_name) + text)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
