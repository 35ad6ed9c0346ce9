"""Operations: Prometheus metrics, JSON logs with request ids, optional OpenTelemetry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_service.observability.metrics import Metrics
from llm_service.observability.record import Observability, RequestRecord
from llm_service.observability.tracing import build_tracing
from llm_service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def build_observability(
    settings: Settings,
    *,
    embedded_state: Callable[[], str] = lambda: "disabled",
    endpoint: Callable[[], str] = lambda: "",
    span_exporter: SpanExporter | None = None,
) -> Observability:
    """Metrics when ``LLM_METRICS_ENABLED``, tracing when ``LLM_OTLP_ENDPOINT`` is set (or an
    exporter is given, as in tests)."""
    return Observability(
        metrics=Metrics(embedded_state) if settings.metrics_enabled else None,
        tracing=build_tracing(settings, span_exporter),
        endpoint=endpoint,
    )


__all__ = ["Metrics", "Observability", "RequestRecord", "build_observability"]
