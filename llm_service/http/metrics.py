"""``GET /metrics``: Prometheus text exposition (only when ``LLM_METRICS_ENABLED``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llm_service.observability import Observability
from llm_service.observability.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, in-flight generations, latencies, tokens, errors",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}}},
)
async def metrics(request: Request) -> Response:
    obs: Observability = request.app.state.observability
    assert obs.metrics is not None  # the route exists only with metrics on
    return Response(obs.metrics.render(), media_type=CONTENT_TYPE)
