"""Splitting chat text into content, reasoning and tool calls, fed in any chunking."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.chat.output_parser import ChatDelta, ChatOutputParser
from core.chat.tools import TOOL_FORMATS

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


# --- property (hypothesis): any chunking gives what feeding the whole text gives -----------

def _call(name: str, args: dict[str, Any]) -> str:
    return f'<tool_call>{{"name":"{name}","arguments":{json.dumps(args)}}}</tool_call>'


PLAIN = st.text(alphabet='ab <>/_{}":,\n', max_size=12)
TAG_BITS = st.sampled_from(["<tool_call>", "</tool_call>", "<tool", "<think>", "</think>",
                            "</thi", "<"])
CALLS = st.builds(_call, st.sampled_from(["f", "get_weather"]),
                  st.dictionaries(st.sampled_from(["x", "city"]),
                                  st.integers() | st.text(max_size=5), max_size=2))
OUTPUT = st.lists(PLAIN | TAG_BITS | CALLS, max_size=6).map("".join)


def parse(text: str, cuts: list[int], tools: bool) -> tuple[str, str, list[tuple[str, str]],
                                                            list[str]]:
    """(content, reasoning, calls as (name, arguments), arguments streamed per call)."""
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    parser = ChatOutputParser(parse_tool_calls=tools)
    deltas = [parser.feed(text[a:b]) for a, b in itertools.pairwise(points)]
    deltas.append(parser.finish())
    streamed = [""] * len(parser.calls)
    for delta in deltas:
        for index, fragment in delta.arguments:
            streamed[index] += fragment
    return ("".join(d.content for d in deltas), "".join(d.reasoning for d in deltas),
            [(c.name, c.arguments) for c in parser.calls], streamed)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(OUTPUT, st.builds("<think>{}</think>{}".format, PLAIN, OUTPUT)),
       cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=30),
       tools=st.booleans())
def test_any_chunking_parses_like_the_whole_text(text: str, cuts: list[int],
                                                 tools: bool) -> None:
    whole = parse(text, [], tools)
    assert parse(text, cuts, tools) == whole
    _, _, calls, streamed = whole
    assert streamed == [arguments for _, arguments in calls]
    for _, arguments in calls:
        json.loads(arguments)  # a completed call's arguments are the JSON that was written


FORMAT_CALLS = {
    "llama3_json": ('{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                    '{"name": "get_weather", "parameters": {"city": "Rome"}}'),
    "mistral": ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "get_weather", "arguments": {"city": "Rome"}}]'),
    "phi4_mini": ('functools[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                  '{"name": "get_weather", "arguments": {"city": "Rome"}}]'),
}


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize("name", list(FORMAT_CALLS))
def test_each_format_parses_its_calls(name: str, step: int) -> None:
    parser = ChatOutputParser(True, TOOL_FORMATS[name])
    deltas = feed_all(parser, FORMAT_CALLS[name], step)
    assert "".join(d.content for d in deltas).strip() == ""
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert [c.index for d in deltas for c in d.new_calls] == [0, 1]


def test_llama3_python_tag_and_text_after_a_call() -> None:
    parser = ChatOutputParser(True, TOOL_FORMATS["llama3_json"])
    deltas = feed_all(parser, 'Sure. <|python_tag|>{"name": "f", "parameters": {}} done', 2)
    assert "".join(d.content for d in deltas) == "Sure. done"
    assert [(c.name, c.arguments) for c in parser.calls] == [("f", "{}")]


@pytest.mark.parametrize("text", ['{"answer": 42}', "[TOOL_CALLS] not json",
                                  '[TOOL_CALLS][{"name": "f", "argu'])
def test_json_that_is_not_a_whole_call_stays_text(text: str) -> None:
    fmt = TOOL_FORMATS["mistral" if text.startswith("[") else "llama3_json"]
    parser = ChatOutputParser(True, fmt)
    deltas = feed_all(parser, text, 3)
    assert parser.calls == [] and "".join(d.content for d in deltas) == text


@pytest.mark.parametrize("name", list(TOOL_FORMATS))
def test_each_format_reads_back_what_its_history_writes(name: str) -> None:
    fmt = TOOL_FORMATS[name]
    parser = ChatOutputParser(True, fmt)
    feed_all(parser, fmt.call_text("lookup", {"q": "x"}), 4)
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("lookup", {"q": "x"})]
