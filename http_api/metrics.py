"""GET /metrics: the server's Prometheus metrics (prometheus-client), one registry per app.

Counted as it happens: HTTP requests by route and status (and their latency), prompt and
generated tokens, time to first token and inter-token latency (both front ends' generations,
through :class:`core.serving.telemetry.GenerationObserver`). Read at scrape time from each chat
engine's stats: running and waiting sequences, KV-cache usage, preemptions and prefix-cache
hits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from core.engine.outputs import EngineStats
from core.serving.chat_model import ServedModel
from core.serving.registry import ModelRegistry

disable_created_metrics()  # no *_created series (process-wide; as vLLM does)

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0, 160.0, 640.0)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 10.0, 20.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)


class Metrics:
    """The metrics of one app over ``models``; it observes the registry's generations."""

    def __init__(self, models: ModelRegistry) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("infermcp_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("infermcp_http_request_duration_seconds",
                                 "Time from request to the end of the response (streams "
                                 "included)", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("infermcp_prompt_tokens", "Prompt tokens read (per "
                                     "sequence; embeddings included)", ["model"], registry=r)
        self.generation_tokens = Counter("infermcp_generation_tokens", "Tokens generated",
                                         ["model"], registry=r)
        self.ttft = Histogram("infermcp_time_to_first_token_seconds", "Time from submitting a "
                              "sequence to its first generated token", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("infermcp_inter_token_latency_seconds", "Time between two "
                             "generated tokens of a sequence", ["model"], buckets=ITL_BUCKETS,
                             registry=r)
        r.register(EngineCollector(models))
        models.observers.append(self)

    def on_first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def on_inter_token(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def on_tokens(self, model: str, prompt_tokens: int, generated_tokens: int) -> None:
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if generated_tokens:
            self.generation_tokens.labels(model).inc(generated_tokens)

    def on_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Each loaded chat model's engine stats, read when Prometheus scrapes."""

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("infermcp_num_requests_running", "Sequences in the "
                                    "running batch", labels=["model"])
        waiting = GaugeMetricFamily("infermcp_num_requests_waiting", "Sequences waiting to "
                                    "run", labels=["model"])
        kv_usage = GaugeMetricFamily("infermcp_kv_cache_usage_ratio", "Share of the KV-cache "
                                     "blocks in use (0 to 1)", labels=["model"])
        preemptions = CounterMetricFamily("infermcp_num_preemptions", "Sequences preempted "
                                          "for lack of KV blocks", labels=["model"])
        hits = CounterMetricFamily("infermcp_prefix_cache_hits", "Prompt tokens whose keys "
                                   "and values the prefix cache already held", labels=["model"])
        queries = CounterMetricFamily("infermcp_prefix_cache_queries", "Prompt tokens looked "
                                      "up in the prefix cache", labels=["model"])
        for entry in self._models.entries:
            if entry.kind != "chat" or entry.model is None:
                continue
            stats = cast(ServedModel, entry.model).engine.stats()
            labels = [entry.id]
            running.add_metric(labels, stats.num_running)
            waiting.add_metric(labels, stats.num_waiting)
            kv_usage.add_metric(labels, kv_cache_usage(stats))
            preemptions.add_metric(labels, stats.num_preemptions)
            hits.add_metric(labels, stats.num_prefix_hits)
            queries.add_metric(labels, stats.num_prefix_queries)
        yield from (running, waiting, kv_usage, preemptions, hits, queries)


def kv_cache_usage(stats: EngineStats) -> float:
    if stats.num_total_blocks <= 0:
        return 0.0
    return 1.0 - stats.num_free_blocks / stats.num_total_blocks


async def metrics(request: Request) -> Response:
    """Prometheus text format: HTTP requests by route and status, token counters, time to
    first token and inter-token latency histograms, running and waiting sequences, KV-cache
    usage and prefix-cache hits per model. Open even when an API key is set."""
    body = cast(Metrics, request.app.state.metrics).render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
