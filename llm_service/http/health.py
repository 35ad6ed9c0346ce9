"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llm_service.errors import ServiceError
from llm_service.protocol.openai import ErrorResponse
from llm_service.serving.chat import ChatService

router = APIRouter(tags=["health"])


@router.get("/v1/health_check", summary="Liveness: the process answers")
async def health_check() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/v1/ready",
    summary="Readiness: the model server answers /v1/models",
    responses={503: {"model": ErrorResponse}},
)
async def ready(request: Request) -> JSONResponse:
    service: ChatService = request.app.state.service
    try:
        models = await service.client.models()
    except ServiceError as exc:
        return JSONResponse(exc.body(), status_code=503)
    served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
    return JSONResponse(
        {
            "status": "ready",
            "model": service.model_name,
            "model_server": service.settings.model_server.value,
            "served_models": served,
        }
    )
