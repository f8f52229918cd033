"""Splitting chat text into content, reasoning and tool calls, fed in any chunking."""

from __future__ import annotations

import json

import pytest

from core.chat_output import ChatDelta, ChatOutputParser

CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'


def feed_all(parser: ChatOutputParser, text: str, step: int) -> list[ChatDelta]:
    deltas = [parser.feed(text[i:i + step]) for i in range(0, len(text), step)]
    return [*deltas, parser.finish()]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_call_after_text(step: int) -> None:
    parser = ChatOutputParser(parse_tool_calls=True)
    deltas = feed_all(parser, "Let me check. " + CALL, step)
    assert "".join(d.content for d in deltas) == "Let me check. "
    assert [c.name for d in deltas for c in d.new_calls] == ["get_weather"]
    args = "".join(a for d in deltas for _, a in d.arguments)
    assert json.loads(args) == {"city": "Paris"}
    assert parser.calls[0].arguments == args and parser.calls[0].id.startswith("call_")


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_two_parallel_calls(step: int) -> None:
    parser = ChatOutputParser(parse_tool_calls=True)
    feed_all(parser, CALL + "\n" + CALL.replace("Paris", "Rome"), step)
    assert [json.loads(c.arguments)["city"] for c in parser.calls] == ["Paris", "Rome"]
    assert [c.index for c in parser.calls] == [0, 1]
    assert parser.calls[0].id != parser.calls[1].id


def test_call_tags_are_plain_text_without_tools() -> None:
    parser = ChatOutputParser(parse_tool_calls=False)
    deltas = feed_all(parser, CALL, 4)
    assert "".join(d.content for d in deltas) == CALL and not parser.calls


def test_cut_off_call_is_returned_as_text() -> None:
    parser = ChatOutputParser(parse_tool_calls=True)
    deltas = feed_all(parser, CALL[:30], 7)
    assert parser.calls == []
    assert "".join(d.content for d in deltas) == CALL[:30]


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_thinking_goes_to_reasoning(step: int) -> None:
    parser = ChatOutputParser(parse_tool_calls=False)
    deltas = feed_all(parser, "<think>Two plus two.</think>It is 4.", step)
    assert "".join(d.reasoning for d in deltas) == "Two plus two."
    assert "".join(d.content for d in deltas) == "It is 4."


def test_think_tag_later_in_text_is_content() -> None:
    parser = ChatOutputParser(parse_tool_calls=False)
    deltas = feed_all(parser, "Hello <think>x</think>", 3)
    assert "".join(d.content for d in deltas) == "Hello <think>x</think>"


def test_partial_tag_is_held_back_until_clear() -> None:
    parser = ChatOutputParser(parse_tool_calls=True)
    assert parser.feed("a <tool").content == "a "
    assert parser.feed("box").content == "<toolbox"
