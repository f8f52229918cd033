"""Normalizing chat messages: any JSON-like input gives messages or a 400, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
