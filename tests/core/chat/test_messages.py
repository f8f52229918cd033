"""Normalizing chat messages: any JSON-like input gives messages or a 400, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.chat.images import ImageData, image_part
from core.chat.messages import MAX_MESSAGES, ROLES, normalize_messages
from core.errors import InvalidRequestError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 3]),
                              "text": st.text(max_size=8) | JSON}) | JSON
CALL = st.fixed_dictionaries({"id": JSON, "function": st.fixed_dictionaries(
    {"name": JSON, "arguments": st.text(max_size=12) | JSON}) | JSON}) | JSON
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from([*ROLES, "robot"]) | JSON},
    optional={"content": st.text(max_size=8) | st.lists(PART, max_size=3) | JSON,
              "tool_calls": st.lists(CALL, max_size=2) | JSON, "tool_call_id": JSON,
              "name": JSON}) | JSON


@settings(max_examples=150, deadline=None)
@given(st.lists(MESSAGE, max_size=4) | JSON)
def test_any_input_is_normalized_or_a_400(messages: Any) -> None:
    try:
        result = normalize_messages(messages)
    except InvalidRequestError as exc:
        assert exc.status_code == 400 and exc.param is not None
        return
    assert len(result) == len(messages)
    for message in result:
        assert message["role"] in ROLES and message["role"] != "developer"
        assert isinstance(message["content"], str)
        for call in message.get("tool_calls", []):
            assert call["type"] == "function" and isinstance(call["function"], dict)


def test_developer_becomes_system_and_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert normalize_messages([{"role": "developer", "content": parts}]) == [
        {"role": "system", "content": "ab"}]


def test_too_many_messages_is_a_400() -> None:
    with pytest.raises(InvalidRequestError, match=f"at most {MAX_MESSAGES}"):
        normalize_messages([{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1))


def loaded_image() -> ImageData:
    return ImageData(b"png", "image/png", Image.new("RGB", (2, 2)), "0" * 64)


def test_text_only_content_is_flattened_as_before() -> None:
    parts = [{"type": "text", "text": "a", "extra": 1}, {"type": "text", "text": "b"}]
    assert normalize_messages([{"role": "user", "content": parts}]) == [
        {"role": "user", "content": "ab"}]


def test_loaded_image_parts_keep_the_content_a_list_of_parts() -> None:
    image = loaded_image()
    parts = [{"type": "text", "text": "a", "extra": 1}, image_part(image, "low"),
             {"type": "text", "text": "b"}]
    (message,) = normalize_messages([{"role": "user", "content": parts}])
    assert message["content"] == [{"type": "text", "text": "a"},
                                  {"type": "image", "image": image, "detail": "low"},
                                  {"type": "text", "text": "b"}]


@pytest.mark.parametrize(("role", "part"), [
    ("user", {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}),
    ("system", image_part(loaded_image())),
    ("user", {"type": "image", "image": "not decoded"}),
])
def test_images_not_loaded_or_outside_user_messages_are_a_400(role: str,
                                                              part: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="read only in user messages") as info:
        normalize_messages([{"role": role, "content": [{"type": "text", "text": "a"}, part]}])
    assert info.value.param == "messages[0].content[1]"
