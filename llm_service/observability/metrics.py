"""Prometheus metrics of one service instance (``GET /metrics``).

Every metric lives in a registry of the app's own (no global state, so several apps in one
process, as in the tests, do not collide). Labels are bounded: routes are the app's declared
paths (anything else is ``other``), statuses are HTTP codes, error kinds are the service's
error types and endpoints are the configured model-server URLs. No user text, no ids.

Cost on the hot path: one histogram observation per upstream read batch (inter-token gap);
everything else once per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

EMBEDDED_STATES = ("disabled", "starting", "running", "exited")

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def endpoint_label(url: str) -> str:
    """``scheme://host:port`` of a model-server URL (each, for a comma-separated list of
    replicas): no credentials, no path."""
    labels = []
    for part in url.split(","):
        parts = urlsplit(part.strip())
        port = f":{parts.port}" if parts.port else ""
        labels.append(f"{parts.scheme}://{parts.hostname}{port}")
    return ",".join(labels)


class _EmbeddedState(Collector):
    """``llm_embedded_server_state{state}``: 1 for the current state, read at scrape time."""

    def __init__(self, state: Callable[[], str]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self.state()
        family = GaugeMetricFamily(
            "llm_embedded_server_state",
            "State of the embedded llama.cpp server (disabled when an endpoint is configured).",
            labels=["state"],
        )
        for state in EMBEDDED_STATES:
            family.add_metric([state], 1.0 if state == current else 0.0)
        yield family


class LoopHistogram(Collector):
    """A histogram observed from the event loop's thread only: a bisect and two additions,
    no lock (several times cheaper than ``prometheus_client.Histogram.observe``). For the
    one metric observed per relayed batch; the scrape also runs on the loop, so it never
    sees a half-done observation."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.sum
        )


class Metrics:
    """The service's metrics and the registry that exposes them."""

    def __init__(self, embedded_state: Callable[[], str] = lambda: "disabled") -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "llm_requests", "HTTP requests by route and status code.", ["route", "status"],
            registry=registry,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "llm_request_duration_seconds", "Time from request to the last byte of the answer.",
            ["route"], buckets=_REQUEST_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "llm_generations_in_flight",
            "Generations (model-server calls) running now, streamed or whole.",
            registry=registry,
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "Streamed answers: time from the request to the first relayed token.",
            buckets=_TTFT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.itl = LoopHistogram(
            "llm_inter_token_latency_seconds",
            "Streamed answers: time between upstream reads that carried tokens (one "
            "observation per read; tokens that arrive in one read count once).",
            _ITL_BUCKETS,
        )
        registry.register(self.itl)
        self.prompt_tokens = Counter(
            "llm_prompt_tokens", "Prompt tokens, as reported by the model server.",
            registry=registry,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "llm_completion_tokens",
            "Completion tokens, as reported by the model server (streams without a usage "
            "report count relayed content chunks).",
            registry=registry,
        )
        self._requests: dict[tuple[str, int], Counter] = {}
        self.upstream_errors = Counter(
            "llm_upstream_errors",
            "Model-server failures by kind (upstream_error, upstream_unavailable, "
            "upstream_timeout) and endpoint; mid-stream failures included.",
            ["kind", "endpoint"], registry=registry,
        )  # fmt: skip
        self.docs_dropped = Counter(
            "llm_documents_dropped", "Reranked documents dropped to fit the token budget.",
            registry=registry,
        )  # fmt: skip
        registry.register(_EmbeddedState(embedded_state))

    def count_request(self, route: str, status: int) -> None:
        """``llm_requests_total{route, status}`` + 1, with the labelled child cached."""
        child = self._requests.get((route, status))
        if child is None:
            child = self._requests[route, status] = self.requests.labels(route, str(status))
        child.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
