"""Output items and their stream events, built from chat deltas."""

from __future__ import annotations

from typing import Any

from core.chat.output_parser import ChatDelta, ToolCall
from core.responses.output import ResponseOutput


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


def test_text_events_in_order_and_the_items() -> None:
    out = ResponseOutput()
    events = out.feed(ChatDelta(content="Hel")) + out.feed(ChatDelta(content="lo"))
    events += out.finish("stop")
    assert types(events) == ["output_item.added", "content_part.added", "output_text.delta",
                             "output_text.delta", "output_text.done", "content_part.done",
                             "output_item.done"]
    (item,) = out.items
    assert item["status"] == "completed" and out.text == "Hello"
    assert item["content"] == [{"type": "output_text", "text": "Hello", "annotations": [],
                                "logprobs": []}]
    assert events[0]["item"]["content"] == [] and events[0]["item"]["status"] == "in_progress"
    assert events[1]["part"]["text"] == "" and events[-1]["item"] == item
    assert {e["output_index"] for e in events} == {0}
    assert {e["item_id"] for e in events[1:-1]} == {item["id"]}


def test_length_makes_the_message_incomplete() -> None:
    out = ResponseOutput()
    out.feed(ChatDelta(content="x"))
    assert out.finish("length")[-1]["item"]["status"] == "incomplete"


def test_no_output_is_one_empty_message() -> None:
    out = ResponseOutput()
    assert types(out.finish("stop"))[0] == "output_item.added"
    assert out.text == "" and len(out.items) == 1


def test_text_then_a_call() -> None:
    out = ResponseOutput()
    call = ToolCall(0, "get_weather", id="call_1")
    events = out.feed(ChatDelta(content="Sure."))
    events += out.feed(ChatDelta(new_calls=[call], arguments=[(0, '{"city"')]))
    events += out.feed(ChatDelta(arguments=[(0, ': "Oslo"}')]))
    events += out.finish("tool_calls")
    assert types(events)[3:] == ["output_text.done", "content_part.done", "output_item.done",
                                 "output_item.added", "function_call_arguments.delta",
                                 "function_call_arguments.delta",
                                 "function_call_arguments.done", "output_item.done"]
    message, fc = out.items
    assert message["content"][0]["text"] == "Sure."
    assert fc == {"id": fc["id"], "type": "function_call", "status": "completed",
                  "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert fc["id"].startswith("fc_") and events[-1]["item"] == fc
    assert events[-2]["arguments"] == fc["arguments"] and events[-2]["output_index"] == 1


def test_a_whole_choice_in_one_delta() -> None:
    out = ResponseOutput()
    calls = [ToolCall(0, "a", '{"x": 1}', "call_a"), ToolCall(1, "b", "{}", "call_b")]
    out.feed(ChatDelta(content="hi", new_calls=calls,
                       arguments=[(0, '{"x": 1}'), (1, "{}")]), finished=True)
    out.finish("tool_calls")
    assert [(i["type"], i.get("arguments")) for i in out.items] == [
        ("message", None), ("function_call", '{"x": 1}'), ("function_call", "{}")]


def test_a_call_cut_off_at_the_end_is_incomplete_not_text() -> None:
    out = ResponseOutput()
    out.feed(ChatDelta(new_calls=[ToolCall(0, "f", id="call_f")], arguments=[(0, '{"x": ')]))
    events = out.feed(ChatDelta(content='<tool_call>{"name": "f", "arguments": {"x": '),
                      finished=True)
    events += out.finish("length")
    (fc,) = out.items
    assert fc["status"] == "incomplete" and fc["arguments"] == '{"x": '
    assert "output_text.delta" not in types(events)


def test_whitespace_between_calls_opens_no_message() -> None:
    out = ResponseOutput()
    out.feed(ChatDelta(new_calls=[ToolCall(0, "a", id="call_a")], arguments=[(0, "{}")]))
    out.feed(ChatDelta(content="\n"))
    out.feed(ChatDelta(new_calls=[ToolCall(1, "b", id="call_b")], arguments=[(1, "{}")]))
    out.feed(ChatDelta(content="\n"))
    out.finish("tool_calls")
    assert [i["type"] for i in out.items] == ["function_call", "function_call"]


def test_held_whitespace_is_kept_before_text_and_alone() -> None:
    out = ResponseOutput()
    out.feed(ChatDelta(content="\n"))
    out.feed(ChatDelta(content="Hi"))
    out.finish("stop")
    assert out.text == "\nHi"
    alone = ResponseOutput()
    alone.feed(ChatDelta(content=" "))
    alone.finish("stop")
    assert alone.text == " " and len(alone.items) == 1
