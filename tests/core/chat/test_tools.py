"""Tool definitions, tool_choice resolution and the tool-call grammar."""

from __future__ import annotations

from typing import Any

import pytest

from core.chat.tools import call_grammar, plan_tools, render_history, tools_system_prompt
from core.engine.grammar import grammar_source
from core.errors import InvalidRequestError

NESTED = {"type": "function", "function": {"name": "f", "description": "does f",
                                           "parameters": {"type": "object"}}}
FLAT = {"type": "function", "name": "g", "parameters": {"type": "object"}}


def test_nested_and_flat_forms() -> None:
    plan = plan_tools([NESTED, FLAT], None)
    assert [t.name for t in plan.tools] == ["f", "g"] and plan.mode == "auto"


@pytest.mark.parametrize(("choice", "mode", "names"), [
    ("none", "none", ["f", "g"]), ("required", "required", ["f", "g"]),
    ({"type": "function", "function": {"name": "g"}}, "required", ["g"]),
    ({"type": "function", "name": "f"}, "required", ["f"]),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required",
                                                 "tools": [{"type": "function", "name": "g"}]}},
     "required", ["g"]),
])
def test_tool_choice(choice: Any, mode: str, names: list[str]) -> None:
    plan = plan_tools([NESTED, FLAT], choice)
    assert plan.mode == mode and [t.name for t in plan.tools] == names


@pytest.mark.parametrize(("tools", "choice"), [
    ([], "required"), ([NESTED], {"type": "function", "function": {"name": "zzz"}}),
    ([NESTED], "sometimes"), ([{"type": "code_interpreter"}], "auto"),
    ([{"type": "function", "function": {}}], "auto"),
])
def test_bad_tool_requests(tools: list[Any], choice: Any) -> None:
    with pytest.raises(InvalidRequestError):
        plan_tools(tools, choice)


def test_named_choice_is_single_call() -> None:
    plan = plan_tools([NESTED], {"type": "function", "function": {"name": "f"}})
    assert plan.parallel is False
    assert "*" not in str(call_grammar(plan).value).split("\nbody")[0]


def test_call_grammar_is_valid() -> None:
    import llguidance

    for choice in ("required", "auto"):
        plan = plan_tools([NESTED, FLAT], choice)
        for with_tag in (True, False):
            source = grammar_source(call_grammar(plan, with_open_tag=with_tag))
            assert llguidance.LLMatcher.validate_grammar(source) == ""


def test_generic_prompt_lists_tools_and_layout() -> None:
    text = tools_system_prompt(plan_tools([NESTED], "auto"))
    assert '"name": "f"' in text and "<tool_call>" in text


def test_history_renders_calls_and_results() -> None:
    history = render_history([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ])
    assert history[1]["content"] == '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    assert history[2] == {"role": "tool", "content": "42"}
