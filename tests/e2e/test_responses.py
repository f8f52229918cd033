"""The Responses API through the `openai` client against the real server and model: turns,
stored conversations, retrieval, deletion, streaming, structured output, function tools, and
stored responses surviving a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from mcp.client import Client
from mcp.types import CallToolResult
from pydantic import BaseModel

from tests.e2e.conftest import Server, launch

CODE_WORD = "PELICAN"
TELL = f"Remember this code word: {CODE_WORD}. Reply with OK."
ASK = "What is the code word I told you? Answer with the word only."
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "strict": True, "parameters": {
               "type": "object", "additionalProperties": False, "required": ["city"],
               "properties": {"city": {"type": "string", "maxLength": 24},
                              "unit": {"enum": ["celsius", "fahrenheit"]}}}}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
GREEDY: dict[str, Any] = {"model": "default", "temperature": 0}


def chat_text(client: openai.OpenAI, messages: list[dict[str, str]], max_tokens: int
              ) -> tuple[str, int]:
    """The greedy chat completion of ``messages``: (text, prompt tokens)."""
    r = client.chat.completions.create(messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
                                       **GREEDY)
    assert r.usage is not None
    return r.choices[0].message.content or "", r.usage.prompt_tokens


def test_one_turn_equals_the_chat_api(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Name three colours.", max_output_tokens=24, **GREEDY)
    assert r.id.startswith("resp_") and r.object == "response" and r.model
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage is not None and r.usage.total_tokens == r.usage.input_tokens + \
        r.usage.output_tokens
    if r.status == "incomplete":
        assert r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"
        assert r.usage.output_tokens == 24
    text, prompt_tokens = chat_text(client, [{"role": "user", "content": "Name three colours."}],
                                    24)
    assert (r.output_text, r.usage.input_tokens) == (text, prompt_tokens)


def test_follow_up_continues_the_stored_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(input=TELL, max_output_tokens=24, **GREEDY)
    second = client.responses.create(input=ASK, previous_response_id=first.id,
                                     max_output_tokens=16, **GREEDY)
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # the first turn's prompt was cached: the follow-up reads its whole blocks from the cache
    assert second.usage.input_tokens_details.cached_tokens >= \
        first.usage.input_tokens // 16 * 16 > 0
    # the prompt was exactly the whole conversation: the chat API given it says the same
    whole = [{"role": "user", "content": TELL}, {"role": "assistant", "content": first.output_text},
             {"role": "user", "content": ASK}]
    assert (second.output_text, second.usage.input_tokens) == chat_text(client, whole, 16)
    # and the model did read the first turn: it names the word, which it cannot without it
    assert CODE_WORD in second.output_text.upper()
    alone = client.responses.create(input=ASK, max_output_tokens=16, **GREEDY)
    assert CODE_WORD not in alone.output_text.upper()


def test_instructions_are_not_carried_over(client: openai.OpenAI) -> None:
    first = client.responses.create(input="Hi.", instructions="You are a pirate.",
                                    max_output_tokens=8, **GREEDY)
    second = client.responses.create(input="Bye.", previous_response_id=first.id,
                                     max_output_tokens=8, **GREEDY)
    assert second.instructions is None and second.usage is not None
    whole = [{"role": "user", "content": "Hi."},
             {"role": "assistant", "content": first.output_text},
             {"role": "user", "content": "Bye."}]
    assert second.usage.input_tokens == chat_text(client, whole, 8)[1]


def test_retrieve_then_delete_then_404(client: openai.OpenAI) -> None:
    created = client.responses.create(input="Say hi.", max_output_tokens=8,
                                      metadata={"test": "retrieve"}, **GREEDY)
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert fetched.metadata == {"test": "retrieve"}
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(created.id)
    assert info.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(input="And?", previous_response_id=created.id, **GREEDY)
    assert info.value.code == "previous_response_not_found"


def test_unknown_previous_response_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(input="Hi.", previous_response_id="resp_doesnotexist")
    assert info.value.code == "previous_response_not_found"
    assert "resp_doesnotexist" in str(info.value.message)


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Hi.", store=False, max_output_tokens=4, **GREEDY)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="More.", previous_response_id=r.id)


def test_streaming_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(input="Tell me about the sea.", max_output_tokens=40,
                                          stream=True, **GREEDY))
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", kinds[-1]]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    final = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and deltas == final.output_text
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()
    whole = client.responses.create(input="Tell me about the sea.", max_output_tokens=40,
                                    **GREEDY)
    assert whole.output_text == deltas


def test_sdk_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(input="Say hello.", max_output_tokens=64, **GREEDY) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == text != ""


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    text_format = {"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                              "strict": True}}
    r = client.responses.create(input="Describe a fictional person.", text=text_format,  # type: ignore[arg-type]
                                max_output_tokens=60, model="default", temperature=0.8,
                                extra_body={"seed": 3, "top_k": 40})  # extensions
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), PERSON)
    assert r.text is not None and r.text.format is not None
    assert r.text.format.type == "json_schema"


def test_sdk_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    class Pet(BaseModel):
        name: str
        legs: int

    r = client.responses.parse(input="Describe a pet.", text_format=Pet, max_output_tokens=60,
                               **GREEDY)
    assert isinstance(r.output_parsed, Pet)


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(input="What's the weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
                                    tool_choice="required", parallel_tool_calls=False,
                                    max_output_tokens=60, **GREEDY)
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    result = {"type": "function_call_output", "call_id": call.call_id,
              "output": json.dumps({"temp_c": 21, "sky": "sunny"})}
    second = client.responses.create(input=[result], previous_response_id=first.id,  # type: ignore[list-item]
                                     tools=[WEATHER], max_output_tokens=40, **GREEDY)  # type: ignore[list-item]
    assert second.output_text and first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # the same conversation sent whole (the call and its result as input items) reads the same
    whole = client.responses.create(
        input=[{"role": "user", "content": "What's the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name,
                "arguments": call.arguments}, result],  # type: ignore[list-item]
        tools=[WEATHER], max_output_tokens=40, **GREEDY)  # type: ignore[list-item]
    assert whole.usage is not None and whole.usage.input_tokens == second.usage.input_tokens
    assert whole.output_text == second.output_text


def test_named_tool_choice(client: openai.OpenAI) -> None:
    other = {**WEATHER, "name": "get_time", "description": "The time in a city"}
    r = client.responses.create(input="Weather in Oslo?", tools=[other, WEATHER],  # type: ignore[list-item]
                                tool_choice={"type": "function", "name": "get_weather"},
                                max_output_tokens=60, **GREEDY)
    assert [(o.type, o.name) for o in r.output] == [("function_call", "get_weather")]  # type: ignore[union-attr]


def test_truncation(client: openai.OpenAI) -> None:
    long = "hi " * 1500
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(input=long, max_output_tokens=4, **GREEDY)
    assert info.value.code == "context_length_exceeded" and info.value.param == "input"
    assert "truncation" in str(info.value.message)
    r = client.responses.create(input=long, truncation="auto", max_output_tokens=4, **GREEDY)
    assert r.usage is not None and r.truncation == "auto"
    assert r.usage.input_tokens + 4 <= 1024


def test_media_input_is_a_400_naming_the_modalities(client: openai.OpenAI) -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(input=[{"role": "user", "content": [  # type: ignore[list-item]
            {"type": "input_text", "text": "What is this?"}, image]}], **GREEDY)
    assert "modalities: text" in str(info.value.message)
    assert info.value.param == "input[0].content[1]"


async def test_mcp_tools_share_the_stored_responses(server: Server,
                                                    client: openai.OpenAI) -> None:
    async with Client(f"{server.base_url}/mcp", read_timeout_seconds=120) as mcp:
        made = await mcp.call_tool("create_response", {"input": TELL, "temperature": 0,
                                                       "max_output_tokens": 24})
        assert isinstance(made, CallToolResult) and made.structured_content is not None
        response_id = made.structured_content["id"]
        # continued over HTTP from the response MCP made
        http = client.responses.create(input=ASK, previous_response_id=response_id,
                                       max_output_tokens=16, **GREEDY)
        fetched = await mcp.call_tool("get_response", {"response_id": http.id})
        assert isinstance(fetched, CallToolResult) and fetched.structured_content is not None
        assert fetched.structured_content["output_text"] == http.output_text
        assert client.responses.retrieve(response_id).output_text == \
            made.structured_content["output_text"]
        await mcp.call_tool("delete_response", {"response_id": response_id})
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)


def test_stored_responses_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = ["--state-dir", str(state), "--embedding-model", "none", "--max-seq-len", "512",
            "--max-seqs", "4", "--seed", "0"]
    with launch(args, tmp_path / "first.log") as first:
        client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="unused", max_retries=0)
        kept = client.responses.create(input=TELL, max_output_tokens=24, **GREEDY)
        unstored = client.responses.create(input="Hi.", store=False, max_output_tokens=4,
                                           **GREEDY)
    assert (state / "responses.sqlite3").is_file()
    with launch(args, tmp_path / "second.log") as second:
        client = openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="unused",
                               max_retries=0)
        assert client.responses.retrieve(kept.id).model_dump() == kept.model_dump()
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unstored.id)
        follow_up = client.responses.create(input=ASK, previous_response_id=kept.id,
                                            max_output_tokens=16, **GREEDY)
        assert CODE_WORD in follow_up.output_text.upper()
