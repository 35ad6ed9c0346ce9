"""``POST /v1/chat/completions``: the seed's OPEA route, also OpenAI-compatible.

The body is parsed straight from bytes by pydantic (no FastAPI body machinery on the hot
path); the OpenAPI schema still documents ``ChatRequest`` (see ``app.py``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from llm_service.errors import InvalidRequest, ServiceError
from llm_service.schemas import ChatRequest, ErrorResponse, GeneratedDoc
from llm_service.service import ChatService

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (413, 422, 502, 503, 504)
}


class SSEResponse(StreamingResponse):
    """Server-sent events from an async byte iterator, one ASGI send per item.

    Lighter than sse-starlette's per-event machinery (the encoder already produced SSE
    frames), and it always closes the iterator, so a client that goes away cancels the
    upstream request at once.
    """

    body_iterator: AsyncGenerator[bytes, None]

    def __init__(self, first: bytes, body: AsyncGenerator[bytes, None]) -> None:
        self.first = first
        super().__init__(
            body,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type="text/event-stream",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.first, "more_body": True})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away
        finally:
            await self.body_iterator.aclose()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ServiceError(
            f"request body is {length} bytes; the limit is {limit}",
            status=413,
            type="invalid_request_error",
            param="body",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(
                f"request body exceeds the limit of {limit} bytes",
                status=413,
                type="invalid_request_error",
                param="body",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> InvalidRequest:
    """One 422 naming every bad field: ``messages.0.role: Input should be ...``."""
    problems: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            loc = "body"
        elif not loc and ": " in msg:  # model-level checks say "field: reason"
            loc, msg = msg.split(": ", 1)
        first = first or loc or "body"
        problems.append(f"{loc or 'body'}: {msg}")
    return InvalidRequest("; ".join(problems), param=first)


@router.post(
    "/v1/chat/completions",
    response_model=GeneratedDoc,
    responses={
        200: {
            "description": "GeneratedDoc (non-stream) or OpenAI chat.completion.chunk SSE",
            "content": {"text/event-stream": {}},
        },
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
            },
        }
    },
    summary="Answer a query (with reranked docs) or chat messages, whole or streamed",
)
async def chat_completions(request: Request) -> Response:
    service: ChatService = request.app.state.service
    body = await read_body(request, service.settings.max_body_bytes)
    prepared = await service.prepare(parse_request(body))
    settings = service.settings
    stream = prepared.request.wants_stream()
    if stream and not settings.disable_streaming and not settings.output_guard_exists:
        frames = service.stream(prepared)
        try:
            first = await anext(frames)  # upstream errors before it get a status code
        except BaseException:
            await frames.aclose()
            raise
        return SSEResponse(first, frames)
    doc = await service.complete(prepared)
    return Response(orjson.dumps(doc), media_type="application/json")
