"""/metrics: request, token and latency metrics move with traffic; gauges read engine stats."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from http_api.app import create_app
from tests.http_api.fakes import FakeEngine, FakeModel, fake_registry, running

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_tokens_and_latencies_are_counted() -> None:
    with running(create_app(fake_registry())) as client:
        before = scrape(client)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        with client.stream("POST", "/v1/completions", json={"prompt": "abcd", "stream": True}
                           ) as r:
            assert r.status_code == 200 and list(r.iter_lines())
        assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 400
        after = scrape(client)
    ok = {"method": "POST", "route": "/v1/chat/completions"}
    assert value(after, "infermcp_http_requests_total", **ok, status="200") == 1
    assert value(after, "infermcp_http_requests_total", **ok, status="400") == 1
    assert value(after, "infermcp_http_requests_total", method="POST",
                 route="/v1/completions", status="200") == 1
    model = {"model": "fake-model"}
    # the fake prompt is one token a character ("hi", "abcd"); it answers three tokens
    assert value(after, "infermcp_prompt_tokens_total", **model) - \
        value(before, "infermcp_prompt_tokens_total", **model) == 6
    assert value(after, "infermcp_generation_tokens_total", **model) == 6
    assert value(after, "infermcp_time_to_first_token_seconds_count", **model) == 2
    assert value(after, "infermcp_inter_token_latency_seconds_count", **model) == 4
    assert value(after, "infermcp_http_request_duration_seconds_count",
                 route="/v1/completions") == 1


def test_each_app_has_its_own_registry() -> None:
    with running(create_app(fake_registry())) as first, \
            running(create_app(fake_registry())) as second:
        first.post("/v1/chat/completions", json=CHAT)
        ok = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
        assert value(scrape(first), "infermcp_http_requests_total", **ok) == 1
        assert value(scrape(second), "infermcp_http_requests_total", **ok) == 0


def test_unknown_paths_share_one_label() -> None:
    with running(create_app(fake_registry())) as client:
        client.get("/nope/1")
        client.get("/nope/2")
        samples = scrape(client)
    assert value(samples, "infermcp_http_requests_total", method="GET", route="other",
                 status="404") == 2


def test_engine_gauges_are_read_at_scrape_time(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    with running(create_app(fake_registry(FakeModel(engine=engine)))) as client:
        stats = replace(engine.stats(), num_running=3, num_waiting=2, num_free_blocks=4,
                        num_total_blocks=10, num_preemptions=1, num_prefix_queries=9,
                        num_prefix_hits=7)
        monkeypatch.setattr(engine, "stats", lambda: stats)
        samples = scrape(client)
        model = {"model": "fake-model"}
        assert value(samples, "infermcp_num_requests_running", **model) == 3
        assert value(samples, "infermcp_num_requests_waiting", **model) == 2
        assert value(samples, "infermcp_kv_cache_usage_ratio", **model) == pytest.approx(0.6)
        assert value(samples, "infermcp_num_preemptions_total", **model) == 1
        assert value(samples, "infermcp_prefix_cache_hits_total", **model) == 7
        assert value(samples, "infermcp_prefix_cache_queries_total", **model) == 9


def test_metrics_stay_open_with_an_api_key() -> None:
    with running(create_app(fake_registry(), api_key="k")) as client:
        assert client.get("/v1/models").status_code == 401
        samples = scrape(client)
    assert value(samples, "infermcp_http_requests_total", method="GET", route="/v1/models",
                 status="401") == 1
