"""One request's observations, and what happens with them when it ends.

``Observability.begin`` runs when a request arrives: it settles the request id (the
client's ``X-Request-ID`` or a new one), sets it for log lines, and opens the request span
when tracing is on. The route marks what happens (prompt built, generation started, each
upstream batch relayed, the outcome); ``Observability.end`` then updates the metrics, ends
the spans and writes the one access line. Per relayed batch the only work is ``on_batch``:
a clock read and, with metrics on, one histogram observation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Scope

from llm_service.context import request_id
from llm_service.errors import ServiceError, UpstreamError, detached
from llm_service.observability.logs import (
    ACCESS_LOGGER,
    AccessSummary,
    access_log,
    new_request_id,
)
from llm_service.observability.metrics import Metrics, endpoint_label
from llm_service.observability.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

REQUEST_ID_HEADER = b"x-request-id"
QUIET_ROUTES = frozenset({"/v1/health_check", "/v1/ready", "/metrics"})
"""Probes and scrapes: their access lines are DEBUG, not INFO."""


class AnswerFacts(Protocol):
    """What the serving layer's answer tells the record (``serving.relay.Answer``)."""

    @property
    def text_parts(self) -> Sequence[str]: ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def usage(self) -> Mapping[str, Any] | None: ...

    @property
    def error(self) -> ServiceError | None: ...


class ContextFacts(Protocol):
    """What the token budget tells the record (``rag.budget.ContextReport``)."""

    @property
    def docs_used(self) -> int: ...

    @property
    def docs_dropped(self) -> int: ...


class RequestRecord:
    """What one request did, filled in by the serving layer as it goes."""

    __slots__ = (
        "_token", "answer", "context", "first_token", "generating", "headers", "itl",
        "last_batch", "method", "model_span", "request_id", "route", "span", "start",
        "status", "stream", "upstream_error",
    )  # fmt: skip

    def __init__(self, route: str, method: str, rid: str, itl: Callable[[float], None] | None):
        self.route = route
        self.method = method
        self.request_id = rid
        self.headers = [(REQUEST_ID_HEADER, rid.encode("latin-1"))]
        self.start = time.perf_counter()
        self.status = 200
        self.stream = False
        self.generating = False
        self.first_token: float | None = None
        self.last_batch = 0.0
        self.itl = itl
        self.answer: AnswerFacts | None = None  # the generation's outcome, once it runs
        self.context: ContextFacts | None = None  # what the token budget kept
        self.upstream_error: ServiceError | None = None
        self.span: Span | None = None
        self.model_span: Span | None = None
        self._token: Token[str] | None = None

    def on_batch(self) -> None:
        """A batch of tokens was relayed (once per upstream read, never per token)."""
        now = time.perf_counter()
        if self.first_token is None:
            self.first_token = now
        elif self.itl is not None:
            self.itl(now - self.last_batch)
        self.last_batch = now

    def fail(self, exc: ServiceError) -> None:
        """The request failed with ``exc`` (handled: it is kept without its traceback)."""
        self.status = exc.status
        if isinstance(exc, UpstreamError):
            self.upstream_error = detached(exc)


class Observability:
    """Metrics, tracing and access logs of one app; each part optional."""

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        endpoint: Callable[[], str] = lambda: "",
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.endpoint = endpoint

    # --- the request's life ----------------------------------------------------------------

    def begin(self, scope: Scope, route: str) -> RequestRecord:
        incoming = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                incoming = value
                break
        rid = new_request_id(incoming)
        metrics = self.metrics
        record = RequestRecord(
            route, scope["method"], rid, metrics.itl.observe if metrics is not None else None
        )
        record._token = request_id.set(rid)
        if self.tracing is not None:
            record.span = self.tracing.start_request(
                f"{scope['method']} {route}",
                scope["headers"],
                {"http.request.method": scope["method"], "http.route": route,
                 "url.path": scope["path"], "llm.request_id": rid},
            )  # fmt: skip
        return record

    @contextmanager
    def prompt_span(self, record: RequestRecord) -> Iterator[None]:
        """The prompt step's span (nothing without tracing)."""
        if self.tracing is None or record.span is None:
            yield
            return
        span = self.tracing.start_child(record.span, "prompt")
        try:
            yield
        finally:
            span.end()

    def start_generation(self, record: RequestRecord, stream: bool) -> dict[str, str]:
        """The model call starts: in-flight gauge, model span; returns the headers for the
        model server (request id, and ``traceparent`` with tracing on)."""
        record.stream = stream
        record.generating = True
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        headers = {"X-Request-ID": record.request_id}
        if self.tracing is not None and record.span is not None:
            record.model_span = span = self.tracing.start_child(record.span, "model", client=True)
            self.tracing.inject(span, headers)
        return headers

    def end(self, record: RequestRecord) -> None:
        """Metrics, spans and the access line of a finished request."""
        now = time.perf_counter()
        answer = record.answer
        if answer is not None and answer.error is not None:
            record.upstream_error = answer.error  # failed mid-stream, after a 200
        prompt_tokens = completion_tokens = None
        if answer is not None and record.generating:
            usage = answer.usage or {}
            prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
            if completion_tokens is None and record.stream:
                completion_tokens = len(answer.text_parts)
        ttft = None if record.first_token is None else record.first_token - record.start
        metrics = self.metrics
        if metrics is not None:
            self._count(metrics, record, now, ttft, prompt_tokens, completion_tokens)
        if record.span is not None:
            self._end_spans(record, prompt_tokens, completion_tokens)
        level = logging.DEBUG if record.route in QUIET_ROUTES else logging.INFO
        if access_log.isEnabledFor(level):
            self._log(record, level, now, ttft, prompt_tokens, completion_tokens)
        if record._token is not None:
            request_id.reset(record._token)

    def _log(
        self,
        record: RequestRecord,
        level: int,
        now: float,
        ttft: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        """The access line: what happened, never what was asked."""
        answer, context = record.answer, record.context
        fields: dict[str, Any] = {
            "request_id": record.request_id, "method": record.method, "route": record.route,
            "status": record.status, "duration_ms": round((now - record.start) * 1000, 2),
        }  # fmt: skip
        if record.generating:
            fields["stream"] = record.stream
            if ttft is not None:
                fields["ttft_ms"] = round(ttft * 1000, 2)
            fields["prompt_tokens"] = prompt_tokens
            fields["completion_tokens"] = completion_tokens
            fields["finish_reason"] = answer.finish_reason if answer is not None else None
        if context is not None:
            fields["docs_used"] = context.docs_used
            fields["docs_dropped"] = context.docs_dropped
        if record.upstream_error is not None:
            fields["error"] = record.upstream_error.type
        # The record made directly: Logger.log would also look up the calling frame. The
        # summary is text only once a handler formats it, on the log thread.
        line = access_log.makeRecord(
            ACCESS_LOGGER, level, __file__, 0, "%s %s %s",
            (record.method, record.route, AccessSummary(fields)), None, extra=fields,
        )  # fmt: skip
        access_log.handle(line)

    def _count(
        self,
        metrics: Metrics,
        record: RequestRecord,
        now: float,
        ttft: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        metrics.count_request(record.route, record.status)
        metrics.request_seconds.labels(record.route).observe(now - record.start)
        if record.generating:
            metrics.in_flight.dec()
        if ttft is not None and record.stream:
            metrics.ttft.observe(ttft)
        if prompt_tokens:
            metrics.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            metrics.completion_tokens.inc(completion_tokens)
        error = record.upstream_error
        if error is not None:
            metrics.upstream_errors.labels(error.type, endpoint_label(self.endpoint())).inc()
        context = record.context
        if context is not None and context.docs_dropped:
            metrics.docs_dropped.inc(context.docs_dropped)

    def _end_spans(
        self, record: RequestRecord, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        assert self.tracing is not None and record.span is not None
        error = record.upstream_error
        model = record.model_span
        if model is not None:
            if prompt_tokens is not None:
                model.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
            if completion_tokens is not None:
                model.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
            model.set_attribute("llm.stream", record.stream)
            if error is not None:
                self.tracing.set_error(model, error.message)
            model.end()
        span = record.span
        span.update_name(f"{record.method} {record.route}")
        span.set_attribute("http.route", record.route)
        span.set_attribute("http.response.status_code", record.status)
        if record.status >= 500 or error is not None:
            self.tracing.set_error(span, error.message if error else f"status {record.status}")
        span.end()

    def shutdown(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()
