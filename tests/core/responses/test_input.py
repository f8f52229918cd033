"""Responses API input items as chat messages."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from core.chat.images import ImageData, image_part
from core.errors import InvalidRequestError
from core.responses.handler import response_format
from core.responses.input import input_messages

CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"city": "Oslo"}'}


def test_a_string_is_one_user_message() -> None:
    assert input_messages("hi", "m") == [{"role": "user", "content": "hi"}]
    assert input_messages(None, "m") == []


def test_messages_with_and_without_type_and_text_parts() -> None:
    items: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "c", "annotations": []}]},
    ]
    assert input_messages(items, "m") == [{"role": "developer", "content": "Be brief."},
                                          {"role": "user", "content": "ab"},
                                          {"role": "assistant", "content": "c"}]


def test_function_calls_join_the_assistant_message_before_them() -> None:
    second = {**CALL, "call_id": "call_2", "arguments": "{}"}
    items = [{"role": "user", "content": "Weather?"},
             {"role": "assistant", "content": "Let me look."}, CALL, second,
             {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 3}'}]
    assert input_messages(items, "m") == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'}]


def test_a_call_without_a_message_before_it_starts_one() -> None:
    (message,) = input_messages([CALL], "m")
    assert message["role"] == "assistant" and message["content"] == ""
    assert message["tool_calls"][0]["id"] == "call_1"


def test_output_items_are_valid_input() -> None:
    output = [{"id": "fc_1", "status": "completed", **CALL}]
    assert input_messages(output, "m")[0]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("kind", ["input_image", "input_audio", "input_file"])
def test_media_parts_are_a_400_naming_the_modalities(kind: str) -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": "see"},
                                          {"type": kind, "image_url": "x"}]}]
    with pytest.raises(InvalidRequestError) as info:
        input_messages(items, "tiny-model")
    assert info.value.param == "input[0].content[1]"
    assert kind in info.value.message and "'tiny-model'" in info.value.message
    assert "modalities: text" in info.value.message


def test_media_in_a_function_output_is_refused_too() -> None:
    items = [{"type": "function_call_output", "call_id": "c",
              "output": [{"type": "input_image", "image_url": "x"}]}]
    with pytest.raises(InvalidRequestError, match="modalities: text"):
        input_messages(items, "m")


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "reasoning", "summary": []}, "input[0].type"),
    ({"type": "item_reference", "id": "x"}, "input[0].type"),
    ({"role": "tool", "content": "x"}, "input[0].role"),
    ({"role": "user", "content": 3}, "input[0].content"),
    ({"role": "user", "content": [{"type": "input_text"}]}, "input[0].content[0]"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
    ({**CALL, "arguments": {"city": "x"}}, "input[0].arguments"),
    ({"type": "function_call_output", "output": "x"}, "input[0].call_id"),
    ("hi", "input[0]"),
])
def test_bad_items_are_a_400_naming_them(item: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        input_messages([item], "m")
    assert info.value.param == param


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object"}
    assert response_format(None) is None
    assert response_format({"type": "json_object"}) == {"type": "json_object"}
    assert response_format({"type": "json_schema", "name": "x", "schema": schema,
                            "strict": True}) == {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    with pytest.raises(InvalidRequestError) as info:
        response_format({"type": "json_schema", "name": "x"})
    assert info.value.param == "text.format.schema"
    with pytest.raises(InvalidRequestError) as info:
        response_format({"type": "yaml"})
    assert info.value.param == "text.format.type"


def test_loaded_images_of_user_messages_keep_the_content_a_list() -> None:
    image = image_part(ImageData(b"png", "image/png", Image.new("RGB", (2, 2)), "0" * 64))
    items = [{"role": "user", "content": [{"type": "input_text", "text": "see"}, image]}]
    assert input_messages(items, "m", ("text", "image")) == [{"role": "user", "content": [
        {"type": "text", "text": "see"}, image]}]


@pytest.mark.parametrize("item", [
    {"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]},
    {"type": "function_call_output", "call_id": "c",
     "output": [{"type": "input_image", "image_url": "x"}]},
])
def test_images_outside_user_messages_are_a_400_for_a_model_that_reads_them(
        item: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="read only in the content of user messages"):
        input_messages([item], "m", ("text", "image"))
