"""``POST /v1/chat/completions``: the seed's OPEA route, also OpenAI-compatible.

The handler is a plain ASGI function (``handle_chat``): it reads the body bytes, parses them
straight into ``ChatRequest`` with pydantic-core, and writes pre-encoded SSE frames with one
ASGI send per upstream read. The FastAPI route below declares it (OpenAPI, docs) and runs
it; ``app.ServiceApp`` runs the same function in front of FastAPI itself, which would
otherwise wrap every per-chunk send in several layers of Starlette/FastAPI middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from llm_service.api.direct import direct_writer
from llm_service.errors import InvalidRequest, ServiceError
from llm_service.limits import ClientWatch, shutting_down
from llm_service.observability import RequestRecord
from llm_service.schemas import ChatRequest, ErrorResponse, GeneratedDoc
from llm_service.service import ChatService
from llm_service.streaming import DONE, FrameSink, OpenAIChunkEncoder, WriteBatch

log = logging.getLogger(__name__)

router = APIRouter()

PATH = "/v1/chat/completions"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 429, 502, 503, 504)
}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ServiceError(
                f"request body is {int(value)} bytes; the limit is {limit}",
                status=413,
                type="invalid_request_error",
                param="body",
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServiceError("client disconnected", status=499, type="client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ServiceError(
                f"request body exceeds the limit of {limit} bytes",
                status=413,
                type="invalid_request_error",
                param="body",
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


async def send_error(
    send: Send, exc: ServiceError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = _JSON_HEADERS + extra if extra else list(_JSON_HEADERS)
    if exc.retry_after:
        headers.append((b"retry-after", exc.retry_after.encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(exc.body())})


async def handle_chat(service: ChatService, scope: Scope, receive: Receive, send: Send) -> None:
    """The whole route as an ASGI function (see the module docstring)."""
    obs = service.observability
    record = obs.begin(scope, PATH)  # request id, log context, request span
    try:
        try:
            service.gate.enter()  # 429 past LLM_MAX_CONCURRENT, before any other work
        except ServiceError as exc:
            record.fail(exc)
            await send_error(send, exc, record.headers)
            return
        try:
            await answer_chat(service, record, scope, receive, send)
        finally:
            service.gate.leave()
    finally:
        obs.end(record)  # metrics, spans, the access line


async def answer_chat(
    service: ChatService, record: RequestRecord, scope: Scope, receive: Receive, send: Send
) -> None:
    try:
        body = await read_body(scope, receive, service.settings.max_body_bytes)
    except ServiceError as exc:
        record.fail(exc)
        if exc.status != 499:
            await send_error(send, exc, record.headers)
        return
    client = ClientWatch(receive)  # a client that goes away cancels the upstream request
    try:
        await _respond(service, record, client, body, send)
    finally:
        client.finish()


async def _respond(
    service: ChatService, record: RequestRecord, client: ClientWatch, body: bytes, send: Send
) -> None:
    obs = service.observability
    streaming = False
    try:
        with obs.prompt_span(record):
            prepared = record.prepared = await service.prepare(parse_request(body))
        settings = service.settings
        if (
            prepared.request.wants_stream()
            and not settings.disable_streaming
            and not settings.output_guard_exists
        ):
            upstream_headers = obs.start_generation(record, stream=True)
            frames = service.stream(prepared, record.on_batch, upstream_headers)
            try:
                first = await anext(frames)  # upstream errors before it get a status code
            except BaseException:
                await frames.aclose()
                raise
            streaming = True
            writes = service.writes if settings.push_relay else None
            if not await stream_frames(send, first, frames, client, record.headers, writes):
                record.status = 499  # the client went away before the end
            return
        generation = obs.start_generation(record, stream=False)
        # Encoded inside the error handling: an encoding failure is a 500, not a torn answer.
        doc = orjson.dumps(await service.complete(prepared, generation))
    except ServiceError as exc:
        record.fail(exc)
        if exc.status >= 500:
            log.warning("POST %s -> %d: %s", PATH, exc.status, exc.message)
        if exc.status != 499:
            await send_error(send, exc, record.headers)
        return
    except asyncio.CancelledError:
        # The client went away (nothing to send), or shutdown's drain timeout ended: a
        # stream ends itself (stream_frames), others get a 503.
        if not streaming:
            if client.gone:
                record.status = 499
            else:
                err = shutting_down()
                record.fail(err)
                await send_error(send, err, record.headers)
                client.finish()
            _uncancel()
        return
    except Exception:
        record.status = 500
        log.exception("unexpected error on POST %s", PATH)
        await send_error(send, ServiceError("internal error", status=500), record.headers)
        return
    headers = _JSON_HEADERS + record.headers
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": doc})
    client.finish()


async def stream_frames(
    send: Send,
    first: bytes,
    frames: AsyncGenerator[bytes, FrameSink | None],
    client: ClientWatch,
    extra: list[tuple[bytes, bytes]] | None = None,
    writes: WriteBatch | None = None,
) -> bool:
    """SSE frames, one ASGI send each, or, given ``writes`` and under uvicorn, written from
    the model server connection's callback (``api.direct``) while the client keeps up. A
    client that goes away cancels this task (``ClientWatch``); the iterator is always closed,
    which closes the upstream response, so the model server stops generating at once. False
    when the client went away."""
    headers = _SSE_HEADERS + extra if extra else _SSE_HEADERS
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        message: Message = {"type": "http.response.body", "body": first, "more_body": True}
        await send(message)
        direct = direct_writer(send, writes) if writes is not None else None
        while True:
            try:
                # Push while the client keeps up; asend returns when that stops or the
                # answer ends (its last frame), and the frame goes through send as usual.
                frame = await frames.asend(direct if direct is not None and direct.ready else None)
            except StopAsyncIteration:
                break
            finally:
                if direct is not None:
                    direct.flush()  # pushed frames still waiting go before anything we send
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        client.finish()  # receive() says "disconnect" once the response is complete
    except OSError:
        return False  # the client went away (some servers raise on send)
    except asyncio.CancelledError:
        _uncancel()  # our own cancellation: the client left, or the drain timeout ended
        if client.gone:
            return False
        end = OpenAIChunkEncoder.error(shutting_down()) + DONE  # an error event, a clean end
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": end, "more_body": False})
        client.finish()
    finally:
        await frames.aclose()
    return True


def _uncancel() -> None:
    """The request ended itself after a cancellation; the server sees a finished response."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class _ASGIResponse(Response):
    """Lets a FastAPI route hand the real ``send`` to a raw ASGI handler."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Any]) -> None:
        super().__init__()
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


@router.post(
    PATH,
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
    return _ASGIResponse(lambda scope, receive, send: handle_chat(service, scope, receive, send))
