"""The operator's surface on the real server: metrics that move with traffic (HTTP and MCP),
request ids and the access log, CORS closed by default, and the tokenizer endpoints."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from mcp.client import Client
from prometheus_client.parser import text_string_to_metric_families

from core.models.tokenizer import Tokenizer
from tests.e2e.conftest import Server, log_lines

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HI = [{"role": "user", "content": "Name a colour."}]
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def scrape(server: Server) -> Samples:
    r = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metrics_move_with_a_chat_request(server: Server, client: openai.OpenAI) -> None:
    model = {"model": server.model_id}
    before = scrape(server)
    reply = client.chat.completions.create(model="default", messages=HI, max_tokens=8,
                                           temperature=0)
    after = scrape(server)
    assert reply.usage is not None
    route = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert delta(before, after, "infermcp_http_requests_total", **route) == 1
    assert delta(before, after, "infermcp_prompt_tokens_total", **model) == \
        reply.usage.prompt_tokens
    assert delta(before, after, "infermcp_generation_tokens_total", **model) == \
        reply.usage.completion_tokens
    assert delta(before, after, "infermcp_time_to_first_token_seconds_count", **model) == 1
    inter = delta(before, after, "infermcp_inter_token_latency_seconds_count", **model)
    assert 1 <= inter <= reply.usage.completion_tokens - 1
    assert value(after, "infermcp_num_requests_running", **model) == 0
    assert 0 <= value(after, "infermcp_kv_cache_usage_ratio", **model) < 1
    assert delta(before, after, "infermcp_prefix_cache_queries_total", **model) == \
        reply.usage.prompt_tokens
    assert reply.usage.prompt_tokens_details is not None
    assert delta(before, after, "infermcp_prefix_cache_hits_total", **model) == \
        reply.usage.prompt_tokens_details.cached_tokens


async def test_mcp_generations_count_too(server: Server) -> None:
    model = {"model": server.model_id}
    before = scrape(server)
    async with Client(f"{server.base_url}/mcp", read_timeout_seconds=120) as mcp:
        result = await mcp.call_tool("complete", {"prompt": "One, two,", "max_tokens": 4,
                                                  "temperature": 0})
    assert not result.is_error
    usage = result.structured_content["usage"]  # type: ignore[index]
    after = scrape(server)
    assert delta(before, after, "infermcp_generation_tokens_total", **model) == \
        usage["completion_tokens"]
    assert delta(before, after, "infermcp_http_requests_total", method="POST", route="/mcp",
                 status="200") >= 1


def test_request_id_is_echoed_and_logged(server: Server, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=HI, max_tokens=3, extra_headers={"x-request-id": "e2e-ok-1"})
    assert raw.headers["x-request-id"] == "e2e-ok-1"
    usage = raw.parse().usage
    assert usage is not None
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=120,
                      headers={"x-request-id": "e2e-sse-1"},
                      json={"messages": HI, "max_tokens": 3, "stream": True}) as r:
        assert r.headers["x-request-id"] == "e2e-sse-1"
        assert list(r.iter_lines())[-2:] == ["data: [DONE]", ""]
    bad = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                     json={"model": "nope", "messages": HI})
    assert bad.status_code == 404 and len(bad.headers["x-request-id"]) == 32
    bad_id = bad.headers["x-request-id"]
    lines = [line for line in log_lines(server.log_path, f"request_id={bad_id}")
             if "infermcp.access" in line]
    (ok,) = [line for line in lines if "request_id=e2e-ok-1" in line]
    assert "path=/v1/chat/completions status=200" in ok
    assert f"prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens}" \
        in ok
    assert any("request_id=e2e-sse-1" in line and "completion_tokens=" in line
               for line in lines)
    assert any(f"request_id={bad_id}" in line and "status=404" in line for line in lines)


def test_no_cross_origin_access_by_default(server: Server) -> None:
    r = httpx.options(f"{server.base_url}/v1/chat/completions", timeout=30, headers={
        "Origin": "http://a.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "http://a.example"},
                  timeout=30)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def post(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.base_url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_tokenize_detokenize_round_trip(server: Server, tokenizer: Tokenizer) -> None:
    prompt = "The capital of France is Paris. Ünïcödé ✓"
    tokens = post(server, "/tokenize", {"prompt": prompt})
    assert tokens["tokens"] == tokenizer.encode(prompt)
    assert tokens["count"] == len(tokens["tokens"]) and tokens["model"] == server.model_id
    assert tokens["max_model_len"] == 1024
    assert post(server, "/detokenize", {"tokens": tokens["tokens"]})["prompt"].endswith(prompt)
    plain = post(server, "/tokenize", {"prompt": prompt, "add_special_tokens": False})
    assert post(server, "/detokenize", {"tokens": plain["tokens"]})["prompt"] == prompt


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_chat_tokenize_counts_what_chat_reports(server: Server, client: openai.OpenAI,
                                                tools: list[Any] | None) -> None:
    tokens = post(server, "/tokenize", {"messages": HI, "tools": tools})
    extra = {"tools": tools} if tools else {}
    reply = client.chat.completions.create(model="default", messages=HI, max_tokens=1,
                                           **extra)
    assert reply.usage is not None and tokens["count"] == reply.usage.prompt_tokens
    text = post(server, "/detokenize", {"tokens": tokens["tokens"]})["prompt"]
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert ("get_weather" in text) is bool(tools)


def test_messages_without_the_generation_prompt(server: Server) -> None:
    tokens = post(server, "/tokenize", {"messages": HI, "add_generation_prompt": False})
    text = post(server, "/detokenize", {"tokens": tokens["tokens"]})["prompt"]
    assert text.endswith("Name a colour.<|im_end|>\n")


def test_embedding_model_tokenize_counts_what_embeddings_report(
        server: Server, client: openai.OpenAI) -> None:
    text = "How do I reset my password?"
    tokens = post(server, "/tokenize", {"model": server.embedding_model_id, "prompt": text})
    result = client.embeddings.create(model=server.embedding_model_id, input=text)
    assert tokens["count"] == result.usage.prompt_tokens
    assert tokens["max_model_len"] == 256


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/tokenize", {"model": "nope", "prompt": "x"}, 404),
    ("/detokenize", {"tokens": [10**9]}, 400),
    ("/detokenize", {"tokens": [-1]}, 400),
    ("/tokenize", {"prompt": "x", "messages": HI}, 400),
])
def test_tokenizer_errors_use_the_envelope(server: Server, path: str, body: dict[str, Any],
                                           status: int) -> None:
    r = httpx.post(f"{server.base_url}{path}", json=body, timeout=30)
    assert r.status_code == status
    assert set(json.loads(r.text)["error"]) == {"message", "type", "param", "code"}
