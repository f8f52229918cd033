"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

The document is the one the session server serves at /openapi.json (built at collection time
as the app builds it, and checked equal to the served one: schemathesis' fixture-based loader
does not run under pytest 9). Schemathesis generates valid and invalid requests for every
operation (its examples, boundary cases, then random ones) and sends them to the real server
with the real model. Checks: no 5xx, statuses, content types
and bodies as documented (each SSE event of a stream included), every error in OpenAI's
envelope, schema-violating requests rejected with a 4xx; afterwards the server is healthy and
idle. Each generated request stays cheap: :func:`cheap` clamps what it asks the model to do
(a few tokens, n <= 2). POST /re_isq is left out: it re-quantizes the shared server's model.

Runs are deterministic (derandomized); ``INFERMCP_FUZZ_EXAMPLES`` raises the number of random
examples per operation (default :data:`MAX_EXAMPLES`) for a longer hunt.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from schemathesis import Case, CheckContext, HookContext, Response

from http_api.app import API_ROUTES, DESCRIPTION
from http_api.openapi import openapi_document
from tests.e2e.conftest import Server
from tests.e2e.test_reliability import wait_idle

MAX_EXAMPLES = int(os.environ.get("INFERMCP_FUZZ_EXAMPLES", "12"))
MAX_TOKENS = 2  # what one generated request may ask the model to generate, at most
MAX_N = 2
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens")
SKIPPED = [("POST", "/re_isq")]

cases: Counter[str] = Counter()  # cases sent, by operation


GENERATING = {"/v1/chat/completions": "max_tokens", "/v1/completions": "max_tokens",
              "/v1/responses": "max_output_tokens"}  # and the field that bounds the work


def integral(value: Any) -> bool:
    """An integer in JSON Schema's reading (``4.0`` is one; ``true`` is not)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def cheap(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its token counts at most MAX_TOKENS (the limit set where the server's
    default would be the whole context) and ``n``/``best_of`` at most MAX_N. Values the schema
    rejects (negative, wrong type) are kept as they are: a negative case stays negative."""
    body = dict(body)
    for name in TOKEN_FIELDS:
        if integral(value := body.get(name)) and value > MAX_TOKENS:
            body[name] = MAX_TOKENS
    for name in ("n", "best_of"):
        if integral(value := body.get(name)) and 1 <= value <= 16:
            body[name] = min(value, MAX_N)
    limit = GENERATING.get(path)
    if limit is not None and body.get(limit) is None and body.get(
            "max_completion_tokens") is None:
        body[limit] = MAX_TOKENS
    return body


def deeper(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with what the server requires and the schema does not say filled in, so more
    cases get past the first check: an input for /v1/responses, one of prompt and messages
    for /tokenize, a known role for each message. Only valid values replace valid values."""
    body = dict(body)
    if path == "/v1/responses" and body.get("input") in (None, "", []):
        body["input"] = "Say hi."
    messages = body.get("messages")
    if path == "/tokenize" and body.get("prompt") is None and messages is None:
        body["prompt"] = "Say hi."
    elif path == "/tokenize" and body.get("prompt") is not None and messages is not None:
        del body["messages"]
    elif isinstance(messages, list):
        body["messages"] = [{**m, "role": "user"} if isinstance(m, dict) and
                            isinstance(m.get("role"), str) else m for m in messages]
    return body


served: dict[str, str] = {}  # the session server's chat and embedding model ids


@pytest.fixture(autouse=True, scope="module")
def served_models(server: Server) -> None:
    served.update(chat=server.model_id, embedding=server.embedding_model_id)


def build_schema() -> schemathesis.BaseSchema:
    """The document the server serves at /openapi.json (built here as the app builds it, as
    tests collect before the server starts; a test below checks the two are the same)."""
    config = schemathesis.Config.from_dict({
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none"},
        "output": {"sanitization": {"enabled": False}},  # "max_tokens" is no secret
        "checks": {
            # a valid body may still be refused on its meaning (context too long, an unknown
            # tool name, an invalid grammar...): a 400, never anything else
            "positive_data_acceptance": {"expected-statuses": ["2XX", 400, 404]},
        },
    })
    doc = openapi_document(API_ROUTES, auth=False, description=DESCRIPTION)
    loaded = schemathesis.openapi.from_dict(doc, config=config)
    for method, path in SKIPPED:
        loaded = loaded.exclude(method=method, path=path)
    return loaded


schema = build_schema()


@schema.hook
def flatmap_body(ctx: HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Random cases (the fuzzing phase): often name a served model (a random string names
    none: a 404) and stream (the default is not to). Only valid values replace valid values,
    so a negative case stays negative."""
    if not isinstance(body, dict):
        return st.just(body)
    path = ctx.operation.path if ctx.operation is not None else ""
    options: dict[str, list[Any]] = {}
    if isinstance(body.get("model"), str):
        kind = "embedding" if path == "/v1/embeddings" else "chat"
        options["model"] = [body["model"], "default", served[kind]]
    if isinstance(body.get("stream"), bool):
        options["stream"] = [body["stream"], True]

    def chosen(values: dict[str, Any]) -> dict[str, Any]:
        changed = {**body, **values}
        return {k: v for k, v in changed.items() if k in body or v is not None}

    return st.fixed_dictionaries({k: st.sampled_from(v) for k, v in options.items()}).map(
        chosen)


@schemathesis.check
def openai_error_envelope(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the envelope: {body}"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"not the envelope: {body}"
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    return True


@schemathesis.check
def complete_event_stream(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 200 stream is whole: every ``data:`` is a JSON object (or the final ``[DONE]`` of the
    chat and completion streams), an error event has the envelope, and it ends as documented
    (unless schemathesis stopped reading a long stream, after its first events)."""
    if response.status_code != 200 or "event-stream" not in response.headers.get(
            "content-type", [""])[0]:
        return None
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data, "an empty stream"
    responses_api = case.path == "/v1/responses"
    whole = not response.stream_cut_short
    if not responses_api and (whole or data[-1] == "[DONE]"):
        assert data[-1] == "[DONE]", f"the stream does not end with [DONE]: {data[-1]}"
        data = data[:-1]
    events = [json.loads(item) for item in data]
    assert all(isinstance(e, dict) for e in events), events
    for event in events:
        if "error" in event:
            assert set(event["error"]) == {"message", "type", "param", "code"}, event
    if responses_api and whole:
        assert events[-1]["type"] in {"response.completed", "response.incomplete",
                                      "response.failed"}, events[-1]
    if responses_api:
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return True


def test_the_server_serves_the_fuzzed_document(server: Server) -> None:
    served_doc = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    assert served_doc == schema.raw_schema


@schema.parametrize()
def test_the_api_survives_generated_requests(case: Case, server: Server) -> None:
    if isinstance(case.body, dict):  # in every phase (the body hook sees random cases only)
        case.body = deeper(case.path, cheap(case.path, case.body))
    cases[case.operation.label] += 1
    case.call_and_validate(base_url=server.base_url, timeout=120)


HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/responses", {"input": "Hi", "top_k": 3236821367618950777536512}, "top_k"),
    ("/v1/chat/completions", {"messages": HI, "seed": 1 << 64}, "seed"),
    ("/v1/chat/completions", {"messages": HI, "stop_token_ids": [1 << 24], "min_tokens": 2},
     "stop_token_ids"),
])
def test_values_that_once_failed_the_whole_batch_are_400s(server: Server, path: str,
                                                          body: dict[str, Any],
                                                          param: str) -> None:
    """Found by the fuzzing: each took the engine down (every request in flight failed, and
    /health stayed 503)."""
    r = httpx.post(f"{server.base_url}{path}", json={**body, "temperature": 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_the_server_is_healthy_and_idle_after_fuzzing(server: Server) -> None:
    """Run after the fuzzing above: every operation got cases, and none broke the server."""
    print(f"fuzz cases: {sum(cases.values())} over {len(cases)} operations: {dict(cases)}")
    assert len(cases) == len(list(schema.get_all_operations())) == 11
    assert all(count >= MAX_EXAMPLES // 2 for count in cases.values()), cases
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    stats = wait_idle(server)
    assert stats["free_blocks"] == stats["total_blocks"]
