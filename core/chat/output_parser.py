"""Splitting generated chat text into reasoning, content and tool calls, incrementally.

Fed the text deltas of one choice, :class:`ChatOutputParser` returns what may be shown now:
``<think>...</think>`` at the start goes to ``reasoning``; ``<tool_call>{"name": ..,
"arguments": ..}</tool_call>`` becomes a call (first its id and name, then argument text
fragments); everything else is ``content``. Text that might be the start of a tag is held
back until it is clear.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from core.chat.tools import CALL_CLOSE, CALL_OPEN

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

    def __init__(self, parse_tool_calls: bool) -> None:
        self._tools = parse_tool_calls
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
        if self._state == "call":  # cut off inside a call: show it as text, not a broken call
            self.calls.pop()
            delta.content += CALL_OPEN + self._call_text
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
            self._state = "content"
            return True
        if self._state == "reasoning":
            return self._until(THINK_CLOSE, delta, "reasoning", "content")
        if self._state == "content":
            if not self._tools:
                delta.content, self._buffer = delta.content + self._buffer, ""
                return False
            return self._until(CALL_OPEN, delta, "content", "call")
        return self._in_call(delta)

    def _until(self, tag: str, delta: ChatDelta, field_name: str, next_state: str) -> bool:
        index = self._buffer.find(tag)
        if index >= 0:
            self._emit(delta, field_name, self._buffer[:index])
            self._buffer = self._buffer[index + len(tag):]
            self._state = next_state
            if next_state == "call":
                self.calls.append(ToolCall(len(self.calls), ""))
                self._call_text, self._args_sent = "", 0
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
        self._buffer = args[end + len(_CALL_TAIL):].lstrip("\n")
        self._state = "content"
        return True

    @staticmethod
    def _emit(delta: ChatDelta, field_name: str, text: str) -> None:
        setattr(delta, field_name, getattr(delta, field_name) + text)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
