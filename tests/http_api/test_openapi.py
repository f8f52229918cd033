"""The OpenAPI document: valid 3.1, every route in it, extensions described, and its request
schemas accept what the `openai` client really sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openapi_spec_validator import validate
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from core.serving.registry import ModelEntry, ModelRegistry
from http_api import protocol
from http_api.app import API_ROUTES, create_app
from tests.http_api.fakes import FakeModel, fake_registry, running

EXTENSIONS = ["top_k", "min_p", "repetition_penalty", "stop_token_ids", "ignore_eos",
              "min_tokens", "truncate_sequence", "grammar"]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(fake_registry()).state.openapi


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for components.schemas[name] whose $refs resolve inside ``doc``."""
    root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_served_route_is_documented() -> None:
    app = create_app(fake_registry())
    doc = app.state.openapi
    meta = {"/openapi.json", "/api-doc/openapi.json", "/docs"}
    served = {(r.path, m.lower()) for r in app.routes if isinstance(r, Route)
              and r.path not in meta for m in (r.methods or ()) if m != "HEAD"}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    assert {"/health", "/v1/models", "/v1/chat/completions", "/v1/completions",
            "/v1/embeddings", "/tokenize", "/detokenize", "/metrics"} <= set(doc["paths"])


@pytest.mark.parametrize("model", ["ChatCompletionRequest", "CompletionRequest"])
def test_extension_fields_are_described(doc: dict[str, Any], model: str) -> None:
    props = doc["components"]["schemas"][model]["properties"]
    for name in EXTENSIONS:
        assert props[name]["description"].startswith("Extension"), name
    assert all(p.get("description") for p in props.values())


def test_chat_and_embedding_specific_extensions(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["enable_thinking"]["description"].startswith("Extension")
    embeddings = schemas["EmbeddingCreateRequest"]["properties"]
    assert embeddings["truncate_sequence"]["description"].startswith("Extension")


def test_errors_use_the_envelope_and_streams_are_sse(doc: dict[str, Any]) -> None:
    health = doc["paths"]["/health"]["get"]["responses"]["503"]["content"]
    assert health["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for status, response in op["responses"].items():
                if status != "200" and path != "/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, path
    for path in ("/v1/chat/completions", "/v1/completions"):
        ok = doc["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(ok) == {"application/json", "text/event-stream"}
    event = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]
    json_data, done = event["properties"]["data"]["anyOf"]
    assert done == {"const": "[DONE]"}
    assert json_data["contentMediaType"] == "application/json"
    assert [s["$ref"].rsplit("/", 1)[1] for s in json_data["contentSchema"]["anyOf"]] == [
        "ChatCompletionChunk", "ErrorResponse"]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_security_follows_the_api_key() -> None:
    doc = create_app(fake_registry(), api_key="k").state.openapi
    validate(doc)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = {(p, m): op for p, o in doc["paths"].items() for m, op in o.items()}
    assert ops[("/v1/chat/completions", "post")]["security"] == [{"bearer": []}]
    assert "401" in ops[("/tokenize", "post")]["responses"]
    assert ops[("/health", "get")]["security"] == []
    assert ops[("/metrics", "get")]["security"] == []
    unkeyed = create_app(fake_registry()).state.openapi
    assert all(op["security"] == [] for o in unkeyed["paths"].values() for op in o.values())


def test_adding_a_row_serves_and_documents_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from http_api.openapi import ApiRoute

    async def get_thing(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["thing_id"]})

    row = ApiRoute("GET", "/v1/things/{thing_id}", get_thing, "A thing")
    monkeypatch.setattr("http_api.app.API_ROUTES", [*API_ROUTES, row])
    app = create_app(fake_registry())
    op = app.state.openapi["paths"]["/v1/things/{thing_id}"]["get"]
    assert op["parameters"][0]["name"] == "thing_id"
    validate(app.state.openapi)
    with running(app) as client:
        assert client.get("/v1/things/t1").json() == {"id": "t1"}


# What the openai client puts on the wire, captured by a transport that answers 400.

def capture(calls: Callable[[openai.OpenAI], None]) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(400, json={"error": {"message": "captured", "type": "x",
                                                   "param": None, "code": None}})

    client = openai.OpenAI(base_url="http://capture/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    calls(client)
    return sent


def _try(call: Callable[[], object]) -> None:
    with pytest.raises(openai.BadRequestError):
        call()


TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def openai_calls(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create
    messages: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    _try(lambda: chat(model="default", messages=messages, tools=TOOLS, tool_choice="auto",
                      parallel_tool_calls=False, stream=True,
                      stream_options={"include_usage": True}, temperature=0.2, top_p=0.9,
                      max_completion_tokens=32, seed=1, stop=["\n\n"], n=2, logprobs=True,
                      top_logprobs=2, presence_penalty=0.1, frequency_penalty=0.1,
                      logit_bias={"42": -100}, user="u", metadata={"k": "v"}, store=False,
                      extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
                                  "enable_thinking": False, "truncate_sequence": True}))
    _try(lambda: chat(model="default", messages=[{"role": "user", "content": "hi"}],
                      tool_choice={"type": "function", "function": {"name": "get_weather"}},
                      tools=TOOLS, max_tokens=8))
    _try(lambda: chat(model="default", messages=[{"role": "user", "content": "JSON"}],
                      response_format={"type": "json_schema", "json_schema": {
                          "name": "x", "strict": True, "schema": {
                              "type": "object", "properties": {"a": {"type": "integer"}}}}}))
    _try(lambda: chat(model="default", messages=[{"role": "user", "content": "JSON"}],
                      response_format={"type": "json_object"}))
    _try(lambda: chat(model="default", messages=[{"role": "user", "content": "digits"}],
                      extra_body={"grammar": {"type": "regex", "value": "[0-9]+"}}))
    _try(lambda: client.completions.create(model="default", prompt="Once", max_tokens=8,
                                           logprobs=2, stream=True,
                                           stream_options={"include_usage": True},
                                           extra_body={"top_k": 5, "ignore_eos": True,
                                                       "min_tokens": 2}))
    _try(lambda: client.completions.create(model="default", prompt=[[1, 2, 3], [4]], n=2,
                                           best_of=1, stop="x", echo=True))
    _try(lambda: client.embeddings.create(model="default", input=["a", "b"]))
    _try(lambda: client.embeddings.create(model="default", input=[1, 2, 3], dimensions=384,
                                          encoding_format="float", user="u"))


PROTOCOL: dict[str, Any] = {
    "ChatCompletionRequest": protocol.ChatCompletionRequest,
    "CompletionRequest": protocol.CompletionRequest,
    "EmbeddingCreateRequest": protocol.EmbeddingCreateRequest,
    "TokenizeRequest": protocol.TokenizeRequest,
    "DetokenizeRequest": protocol.DetokenizeRequest}
SCHEMAS = {"/v1/chat/completions": ("ChatCompletionRequest", protocol.ChatCompletionRequest),
           "/v1/completions": ("CompletionRequest", protocol.CompletionRequest),
           "/v1/embeddings": ("EmbeddingCreateRequest", protocol.EmbeddingCreateRequest)}


@pytest.fixture(scope="module")
def sent() -> list[tuple[str, dict[str, Any]]]:
    return capture(openai_calls)


def test_the_openai_client_bodies_match_the_request_schemas(
        doc: dict[str, Any], sent: list[tuple[str, dict[str, Any]]]) -> None:
    assert sorted({path for path, _ in sent}) == sorted(SCHEMAS)
    assert any(body.get("stream_options") for _, body in sent)
    assert any(body.get("tools") for _, body in sent)
    assert any(body.get("encoding_format") == "base64" for _, body in sent)
    for path, body in sent:
        name, model = SCHEMAS[path]
        validator(doc, name).validate(body)
        model.model_validate(body)  # and the server's own validation agrees


@pytest.mark.parametrize("name", list(PROTOCOL))
def test_the_examples_docs_offer_are_accepted(doc: dict[str, Any], name: str) -> None:
    (example,) = doc["components"]["schemas"][name]["examples"]
    validator(doc, name).validate(example)
    PROTOCOL[name].model_validate(example)


@pytest.mark.parametrize(("name", "body"), [
    ("ChatCompletionRequest", {"messages": [{"role": "user", "content": "hi"}],
                               "temperature": "hot"}),
    ("ChatCompletionRequest", {"model": "default"}),
    ("CompletionRequest", {"prompt": "x", "top_k": -5}),
    ("EmbeddingCreateRequest", {"input": [1.5]}),
    ("TokenizeRequest", {"prompt": 5}),
])
def test_request_schemas_reject_what_the_server_rejects(doc: dict[str, Any], name: str,
                                                       body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, name).validate(body)


# Real answers of the app (over the fake engine) match the documented response schemas.

@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with running(create_app(fake_registry())) as client:
        yield client


def sse_payloads(client: TestClient, path: str, body: dict[str, Any]) -> list[Any]:
    with client.stream("POST", path, json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_answers_match_the_response_schemas(doc: dict[str, Any], client: TestClient) -> None:
    checks = [
        ("Health", client.get("/health").json()),
        ("ModelList", client.get("/v1/models").json()),
        ("ChatCompletion", client.post("/v1/chat/completions", json={
            **CHAT, "n": 2, "logprobs": True}).json()),
        ("Completion", client.post("/v1/completions", json={"prompt": "hi"}).json()),
        ("TokenizeResponse", client.post("/tokenize", json=CHAT).json()),
        ("DetokenizeResponse", client.post("/detokenize", json={"tokens": [104]}).json()),
        ("ErrorResponse", client.post("/v1/chat/completions", json={
            **CHAT, "model": "nope"}).json()),
        ("ErrorResponse", client.post("/v1/embeddings", json={"input": "x"}).json()),
    ]
    for chunk in sse_payloads(client, "/v1/chat/completions", {
            **CHAT, "stream": True, "stream_options": {"include_usage": True}}):
        checks.append(("ChatCompletionChunk", chunk))
    for chunk in sse_payloads(client, "/v1/completions", {"prompt": "hi", "stream": True}):
        checks.append(("CompletionChunk", chunk))
    for name, answer in checks:
        validator(doc, name).validate(answer)


def event_validator(doc: dict[str, Any], path: str) -> Callable[[str], None]:
    """Validates one SSE event's ``data`` as the document describes events: JSON of its
    ``contentSchema``, or ``[DONE]`` where that is allowed."""
    data = doc["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"][
        "schema"]["properties"]["data"]
    options = data.get("anyOf", [data])

    def validate_event(text: str) -> None:
        if {"const": text} in options:
            return
        (json_data,) = [o for o in options if "contentSchema" in o]
        root = {**json_data["contentSchema"], "components": doc["components"]}
        jsonschema.Draft202012Validator(root).validate(json.loads(text))

    return validate_event


def test_stream_events_match_the_documented_event_schema(doc: dict[str, Any],
                                                         client: TestClient) -> None:
    streams = [("/v1/chat/completions", {**CHAT, "stream": True}),
               ("/v1/completions", {"prompt": "hi", "stream": True}),
               ("/v1/responses", {"input": "hi", "stream": True})]
    for path, body in streams:
        validate_event = event_validator(doc, path)
        with client.stream("POST", path, json=body) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert len(events) > 2
        for event in events:
            validate_event(event)
    with pytest.raises(jsonschema.ValidationError):
        event_validator(doc, "/v1/chat/completions")('{"choices": []}')
    with pytest.raises(json.JSONDecodeError):  # [DONE] ends chat streams, not responses
        event_validator(doc, "/v1/responses")("[DONE]")


def test_a_method_a_path_lacks_is_405_allowing_every_method_it_has(client: TestClient
                                                                   ) -> None:
    r = client.put("/v1/responses/resp_x")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "DELETE"}
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.delete("/v1/responses/resp_x").status_code == 404
    assert client.head("/v1/responses/resp_x").status_code == 404


def test_health_while_loading_matches_its_503_schema(doc: dict[str, Any]) -> None:
    release = threading.Event()

    def slow() -> FakeModel:
        release.wait(5)
        return FakeModel()

    app = create_app(ModelRegistry([ModelEntry("fake-model", "chat", slow)]))
    with TestClient(app) as client:
        r = client.get("/health")
        release.set()
    assert r.status_code == 503
    validator(doc, "Health").validate(r.json())


def test_a_wrong_answer_fails_its_schema(doc: dict[str, Any], client: TestClient) -> None:
    answer = client.post("/v1/chat/completions", json=CHAT).json()
    del answer["choices"][0]["message"]["role"]
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "ChatCompletion").validate(answer)
