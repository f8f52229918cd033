"""/v1/responses over a fake model: the object and its events as the openai SDK's types parse
them, stored conversations, GET/DELETE, failures and bad requests."""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from PIL import Image
from pydantic import TypeAdapter
from starlette.testclient import TestClient

from core.responses.store import SQLiteResponseStore
from core.serving.registry import ModelEntry, ModelRegistry
from http_api.app import create_app
from tests.http_api.fakes import FakeEngine, FakeModel

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
CALL_WORDS = ("<tool_call>", '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
              "</tool_call>")
WEATHER = {"type": "function", "name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Api:
    """A TestClient on a fake model, and that model's engine (to read the prompts it got)."""

    def __init__(self, engine: FakeEngine, store: SQLiteResponseStore,
                 modalities: tuple[str, ...] = ("text",)) -> None:
        registry = ModelRegistry([ModelEntry("fake-model", "chat", lambda: FakeModel(
            engine=engine, input_modalities=modalities))])
        self.engine = engine
        self.client = TestClient(create_app(registry, responses_store=store))
        self.client.__enter__()
        for _ in range(500):
            if self.client.get("/health").status_code == 200:
                break
            time.sleep(0.01)

    def create(self, **body: Any) -> dict[str, Any]:
        r = self.client.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def error(self, status: int, **body: Any) -> dict[str, Any]:
        r = self.client.post("/v1/responses", json=body)
        assert r.status_code == status, r.text
        return dict(r.json()["error"])

    def stream(self, **body: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """The events (checked against the SDK's types and their `event:` lines) and the raw
        lines."""
        with self.client.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = list(r.iter_lines())
        events = []
        for name, data in itertools.pairwise(lines):
            if data.startswith("data: "):
                event = json.loads(data.removeprefix("data: "))
                assert name == f"event: {event['type']}"
                EVENTS.validate_python(event)
                events.append(event)
        return events, lines

    def last_prompt(self) -> str:
        return "".join(chr(i) for i in self.engine.requests[-1].prompt_token_ids)


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Any]:
    apis: list[Api] = []
    store = SQLiteResponseStore(tmp_path / "responses.sqlite3")

    def make(engine: FakeEngine | None = None, modalities: tuple[str, ...] = ("text",)) -> Api:
        apis.append(Api(engine or FakeEngine(), store, modalities))
        return apis[-1]

    yield make
    for api in apis:
        api.client.__exit__(None, None, None)
    store.close()


def test_response_object_parses_as_the_sdks(make_api: Any) -> None:
    body = make_api().create(input="hi", instructions="Be kind.", metadata={"k": "v"},
                             temperature=0.5, max_output_tokens=9)
    parsed = Response.model_validate(body)
    assert parsed.output_text == "Hello there!" and parsed.status == "completed"
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["model"] == "fake-model" and body["error"] is None
    assert (body["instructions"], body["metadata"], body["temperature"],
            body["max_output_tokens"], body["store"]) == ("Be kind.", {"k": "v"}, 0.5, 9, True)
    usage = body["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (10, 3, 13)
    (message,) = body["output"]
    assert message["id"].startswith("msg_") and message["role"] == "assistant"


def test_previous_response_id_replays_the_conversation_but_not_instructions(
        make_api: Any) -> None:
    api = make_api()
    first = api.create(input="Code word: ZEBRA.", instructions="SYSTEM-ONE")
    assert api.last_prompt() == "SYSTEM-ONECode word: ZEBRA."
    second = api.create(input="What was it?", previous_response_id=first["id"])
    assert api.last_prompt() == "Code word: ZEBRA.Hello there!What was it?"
    assert second["previous_response_id"] == first["id"]
    parts = [{"type": "input_text", "text": "And?"}]
    third = api.create(input=[{"role": "user", "content": parts}],
                       previous_response_id=second["id"], instructions="SYSTEM-TWO")
    assert api.last_prompt() == ("SYSTEM-TWOCode word: ZEBRA.Hello there!What was it?"
                                 "Hello there!And?")
    assert third["usage"]["input_tokens"] == len(api.last_prompt())


def test_response_id_header_names_the_new_response(make_api: Any) -> None:
    """A load balancer sticks a conversation to the replica in ``x-response-id``."""
    api = make_api()
    r = api.client.post("/v1/responses", json={"input": "hi"})
    assert r.headers["x-response-id"] == r.json()["id"]
    with api.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as s:
        header, lines = s.headers["x-response-id"], list(s.iter_lines())
    created = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    assert header == created["response"]["id"]


def test_get_and_delete(make_api: Any) -> None:
    api = make_api()
    created = api.create(input="hi")
    path = f"/v1/responses/{created['id']}"
    assert api.client.get(path).json() == created
    assert api.client.delete(path).json() == {"id": created["id"], "object": "response",
                                              "deleted": True}
    for r in (api.client.get(path), api.client.delete(path)):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "response_not_found"
        assert created["id"] in r.json()["error"]["message"]
    error = api.error(404, input="x", previous_response_id=created["id"])
    assert error["code"] == "previous_response_not_found"


def test_store_false_cannot_be_fetched_or_continued(make_api: Any) -> None:
    api = make_api()
    created = api.create(input="hi", store=False)
    assert created["store"] is False
    assert api.client.get(f"/v1/responses/{created['id']}").status_code == 404
    error = api.error(404, input="x", previous_response_id=created["id"])
    assert error == {"message": f"Previous response with id '{created['id']}' not found.",
                     "type": "invalid_request_error", "param": "previous_response_id",
                     "code": "previous_response_not_found"}


def test_stream_events_in_order(make_api: Any) -> None:
    api = make_api()
    events, lines = api.stream(input="hi")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * 3,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == Response.model_validate(final).output_text == "Hello there!"
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert {e["response"]["id"] for e in (events[0], events[1], events[-1])} == {final["id"]}
    assert api.client.get(f"/v1/responses/{final['id']}").json() == final
    assert "data: [DONE]" not in lines


def test_stream_failure_sends_error_then_response_failed(make_api: Any) -> None:
    api = make_api(FakeEngine(fail_after=1))
    events, _ = api.stream(input="hi")
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert "boom" in events[-2]["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and "boom" in failed["error"]["message"]
    assert api.client.get(f"/v1/responses/{failed['id']}").status_code == 404
    assert api.engine.aborted


def test_keep_alive_comments(make_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP_ALIVE_INTERVAL", "20")
    events, lines = make_api(FakeEngine(delay=0.15)).stream(input="hi")
    assert ": keep-alive" in lines and events[-1]["type"] == "response.completed"


def test_token_limit_makes_it_incomplete(make_api: Any) -> None:
    api = make_api(FakeEngine(finish_reason="length"))
    body = api.create(input="hi", max_output_tokens=3)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"
    events, _ = api.stream(input="hi", max_output_tokens=3)
    assert events[-1]["type"] == "response.incomplete"


def test_function_call_round_trip(make_api: Any) -> None:
    api = make_api(FakeEngine(words=CALL_WORDS))
    first = api.create(input="Weather in Oslo?", tools=[WEATHER], tool_choice="required")
    (call,) = first["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Oslo"} and call["call_id"].startswith("call_")
    assert first["tools"][0]["name"] == "get_weather" and first["tool_choice"] == "required"
    assert Response.model_validate(first).output_text == ""
    api.engine.words = ("It is 3 degrees.",)
    api.create(input=[{"type": "function_call_output", "call_id": call["call_id"],
                       "output": '{"temp_c": 3}'}],
               previous_response_id=first["id"], tools=[WEATHER], tool_choice="none")
    prompt = api.last_prompt()
    assert prompt.index("Weather in Oslo?") < prompt.index('"city": "Oslo"') < \
        prompt.index('{"temp_c": 3}')


def test_streamed_function_call_events(make_api: Any) -> None:
    events, _ = make_api(FakeEngine(words=CALL_WORDS)).stream(
        input="Weather?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.function_call_arguments.delta")
    (item,) = events[-1]["response"]["output"]
    assert done["arguments"] == deltas == item["arguments"]
    assert json.loads(deltas) == {"city": "Oslo"}


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]", 400),
    ({"input": []}, "input", 400),
    ({}, "input", 400),
    ({"input": [{"type": "reasoning"}]}, "input[0].type", 400),
    ({"input": "x", "background": True}, "background", 400),
    ({"input": "x", "conversation": "conv_1"}, "conversation", 400),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}},
     "text.format.schema", 400),
    ({"input": "x", "truncation": "sometimes"}, "truncation", 400),
    ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", 400),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", 400),
    ({"input": "x", "tool_choice": "required"}, "tool_choice", 400),
    ({"input": "x", "model": "nope"}, "model", 404),
])
def test_bad_requests(make_api: Any, body: dict[str, Any], param: str, status: int) -> None:
    error = make_api().error(status, **body)
    assert error["param"] == param


def png_uri(size: tuple[int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, "blue").save(out, "PNG")
    return f"data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}"


def test_input_images_are_read_and_kept_with_the_conversation(make_api: Any) -> None:
    api = make_api(modalities=("text", "image"))
    first = api.create(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Look:"},
        {"type": "input_image", "image_url": png_uri((3, 2)), "detail": "high"}]}])
    assert api.last_prompt() == "Look:<image 3x2>"
    api.create(input="And now?", previous_response_id=first["id"])
    assert api.last_prompt() == "Look:<image 3x2>Hello there!And now?"


@pytest.mark.parametrize(("part", "words"), [
    ({"type": "input_image", "file_id": "file-abc"}, "file_id is not supported"),
    ({"type": "input_image", "image_url": "data:image/png;base64,AAAA"}, "not a PNG"),
    ({"type": "input_file", "file_data": "x"}, "files are not supported"),
])
def test_bad_input_images_are_a_400_naming_the_part(make_api: Any, part: dict[str, Any],
                                                     words: str) -> None:
    error = make_api(modalities=("text", "image")).error(400, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "x"}, part]}])
    assert error["param"] == "input[0].content[1]" and words in error["message"]


def test_media_error_names_the_models_modalities(make_api: Any) -> None:
    error = make_api().error(400, input=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}])
    assert "'fake-model'" in error["message"] and "modalities: text" in error["message"]
