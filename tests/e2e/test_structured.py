"""Structured output and tool calls, enforced by the sampler, through the `openai` client."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import lark
import openai
import pytest

from tests.e2e.conftest import Server

ASK = [{"role": "user", "content": "Describe a fictional person."}]

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "additionalProperties": False, "required": ["name", "age"],
     "properties": {"name": {"type": "string", "maxLength": 16},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
    {"type": "object", "additionalProperties": False, "required": ["pet", "colours"],
     "properties": {"pet": {"enum": ["cat", "dog", "fish"]},
                    "colours": {"type": "array", "items": {"enum": ["red", "blue"]},
                                "minItems": 1, "maxItems": 3}}},
    {"type": "object", "additionalProperties": False, "required": ["home"],
     "properties": {"home": {"type": "object", "additionalProperties": False,
                             "required": ["city", "floor"],
                             "properties": {"city": {"type": "string", "maxLength": 12},
                                            "floor": {"type": "number", "minimum": 0,
                                                      "maximum": 9}}}}},
]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 24},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}


def json_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                    "strict": True}}


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_output_validates(client: openai.OpenAI, schema: dict[str, Any]) -> None:
    args = {"model": "default", "messages": ASK, "max_tokens": 80, "temperature": 0.8,
            "seed": 7, "response_format": json_format(schema)}
    r = client.chat.completions.create(**args)  # type: ignore[call-overload]
    assert r.choices[0].finish_reason == "stop"
    text = r.choices[0].message.content or ""
    jsonschema.validate(json.loads(text), schema)
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **args) if c.choices)  # type: ignore[call-overload]
    assert streamed == text


def test_json_object_mode(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=ASK, max_tokens=60,
                                       temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    else:
        assert (r.choices[0].message.content or "").startswith("{")


def test_length_cut_reports_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=ASK, max_tokens=3,
                                       temperature=0, response_format=json_format(SCHEMAS[0]))
    assert r.choices[0].finish_reason == "length"


def test_regex_grammar_fullmatches(client: openai.OpenAI) -> None:
    pattern = r"[0-9]{3}-[0-9]{4}"
    for seed in (1, 2):
        r = client.completions.create(model="default", prompt="Call me at", max_tokens=20,
                                      seed=seed, extra_body={"grammar": {"type": "regex",
                                                                         "value": pattern}})
        assert re.fullmatch(pattern, r.choices[0].text)
        assert r.choices[0].finish_reason == "stop"


def test_lark_grammar_output_parses(client: openai.OpenAI) -> None:
    grammar = 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,3}/\n'
    r = client.chat.completions.create(
        model="default", max_tokens=30, temperature=0.9, seed=3,
        messages=[{"role": "user", "content": "Give me a tuple of numbers."}],
        extra_body={"grammar": {"type": "lark", "value": grammar}})
    lark.Lark(grammar).parse(r.choices[0].message.content or "")


async def test_constrained_and_free_requests_share_a_batch(aclient: openai.AsyncOpenAI) -> None:
    import asyncio

    free = aclient.chat.completions.create(model="default", messages=ASK, max_tokens=20,
                                           temperature=0)
    bound = aclient.chat.completions.create(model="default", messages=ASK, max_tokens=60,
                                            temperature=0, response_format=json_format(SCHEMAS[1]))
    solo = await aclient.chat.completions.create(model="default", messages=ASK, max_tokens=20,
                                                 temperature=0)
    a, b = await asyncio.gather(free, bound)
    assert a.choices[0].message.content == solo.choices[0].message.content
    jsonschema.validate(json.loads(b.choices[0].message.content or ""), SCHEMAS[1])


def test_required_tool_call_then_answer(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="default", messages=messages, tools=[WEATHER],
                                       tool_choice="required", max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    answer = client.chat.completions.create(model="default", messages=messages,
                                            tools=[WEATHER], tool_choice="none", max_tokens=30,
                                            temperature=0)
    assert answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None


def test_named_tool_choice(client: openai.OpenAI) -> None:
    other = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
    r = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[other, WEATHER], max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]


def test_streamed_tool_call_reassembles_to_the_same_call(client: openai.OpenAI) -> None:
    args = {"model": "default", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [WEATHER], "tool_choice": "required", "max_tokens": 60, "temperature": 0}
    whole = client.chat.completions.create(**args).choices[0].message  # type: ignore[call-overload]
    with client.chat.completions.stream(**args) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    streamed = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.tool_calls or []] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls or []]  # type: ignore[union-attr]


def test_stream_tool_call_delta_shape(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER],
            "tool_choice": "required", "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=120) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
    deltas = [d for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls", [])]
    assert all("index" in d for d in deltas)
    first = deltas[0]
    assert first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert all("id" not in d and "name" not in d["function"] for d in deltas[1:])
    reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"]]
    assert [r for r in reasons if r] == ["tool_calls"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"grammar": {"type": "regex", "value": "a+"}, "response_format": {"type": "json_object"}},
     "grammar"),
    ({"grammar": {"type": "regex", "value": "a(b"}}, "grammar"),
    ({"grammar": {"type": "lark", "value": "start: undefined_rule"}}, "grammar"),
    ({"grammar": {"type": "json_schema", "value": {"type": "object", "minProperties": "x"}}},
     "grammar"),
    ({"grammar": {"type": "cfg", "value": "x"}}, "grammar.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
])
def test_bad_structured_requests_are_400(server: Server, extra: dict[str, Any],
                                         param: str) -> None:
    body = {"messages": ASK, "max_tokens": 4, **extra}
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
