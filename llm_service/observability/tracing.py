"""Optional OpenTelemetry tracing: request → prompt → model call spans.

Off by default, at no cost: nothing here imports OpenTelemetry until ``build_tracing`` is
called with an OTLP endpoint (``LLM_OTLP_ENDPOINT``) or an exporter (tests pass the SDK's
``InMemorySpanExporter``). The tracer provider is the app's own, not the global one, and is
shut down (spans flushed) with the app. The model call carries a W3C ``traceparent`` header,
so a model server that traces (vLLM does, with ``--otlp-traces-endpoint``) joins the trace;
an incoming ``traceparent`` makes the request span a child of the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from llm_service import __version__
from llm_service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer


class Tracing:
    """Starts the service's spans on a private tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("llm_service", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    def start_request(
        self, name: str, headers: Iterable[tuple[bytes, bytes]], attributes: Mapping[str, Any]
    ) -> Span:
        """The request's span, a child of the caller's ``traceparent`` if it sent one."""
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in headers
            if k in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier) if carrier else None
        return self.tracer.start_span(
            name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=dict(attributes)
        )

    def start_child(self, parent: Span, name: str, *, client: bool = False) -> Span:
        kind = self._trace.SpanKind.CLIENT if client else self._trace.SpanKind.INTERNAL
        return self.tracer.start_span(
            name, context=self._trace.set_span_in_context(parent), kind=kind
        )

    def inject(self, span: Span, headers: dict[str, str]) -> None:
        """Adds ``traceparent`` (and ``tracestate``) for ``span`` to outgoing headers."""
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))

    def set_error(self, span: Span, message: str) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))

    def shutdown(self) -> None:
        self.provider.shutdown()


def build_tracing(settings: Settings, exporter: SpanExporter | None = None) -> Tracing | None:
    """Tracing to ``LLM_OTLP_ENDPOINT`` (batched) or to ``exporter`` (each span at once);
    None, without importing OpenTelemetry, when neither is given."""
    if exporter is None and settings.otlp_endpoint is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": "llm-service", "service.version": __version__})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ValueError(
                "LLM_OTLP_ENDPOINT is set but the OTLP exporter is not installed: "
                "install the 'tracing' extra (uv sync --extra tracing)"
            ) from exc
        endpoint = f"{settings.otlp_endpoint}/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracing(provider)
