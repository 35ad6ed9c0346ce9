"""``POST /v1/chat/completions``: the seed's OPEA route, also OpenAI-compatible.

The handler is a plain ASGI function (``handle_chat``): it reads the body bytes, parses them
straight into ``ChatRequest`` with pydantic-core, hands the request to the serving layer and
writes what comes back: a JSON document, or the SSE frames of a relay (``serving.relay``),
one ASGI send per upstream read or pushed from the network callback (``http.push``). The
FastAPI route below declares it (OpenAPI, docs) and runs it; ``http.app.ServiceApp`` runs
the same function in front of FastAPI itself, which would otherwise wrap every per-chunk
send in several layers of Starlette/FastAPI middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from llm_service.context import bind_session
from llm_service.errors import ServiceError
from llm_service.http.body import JSON_HEADERS, read_body, send_error
from llm_service.http.disconnect import ClientWatch
from llm_service.http.push import ResponseOut, WriteBatch, direct_writer
from llm_service.observability import RequestRecord
from llm_service.protocol.opea import ChatRequest, GeneratedDoc
from llm_service.protocol.openai import DONE, ErrorResponse, OpenAIChunkEncoder
from llm_service.protocol.validation import invalid_request
from llm_service.serving.chat import ChatService, Streamed
from llm_service.serving.limits import shutting_down

log = logging.getLogger(__name__)

router = APIRouter()

PATH = "/v1/chat/completions"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 429, 502, 503, 504)
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def parse_request(body: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False)) from None


async def handle_chat(
    service: ChatService, writes: WriteBatch | None, scope: Scope, receive: Receive, send: Send
) -> None:
    """The whole route as an ASGI function (see the module docstring). ``writes``: push
    the stream's frames from the network callback, batched per event-loop pass."""
    obs = service.observability
    record = obs.begin(scope, PATH)  # request id, log context, request span
    bind_session(scope["headers"], service.session_header)  # for the replica routing
    try:
        await _answer(service, writes, record, scope, receive, send)
    finally:
        obs.end(record)  # metrics, spans, the access line


async def _answer(
    service: ChatService,
    writes: WriteBatch | None,
    record: RequestRecord,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    try:
        # The body first: a slow client waits for LLM_BODY_TIMEOUT at most, and holds no
        # place under LLM_MAX_CONCURRENT meanwhile.
        body = await read_body(scope, receive, service.settings.max_body_bytes)
        service.gate.enter()  # 429 past LLM_MAX_CONCURRENT, before any other work
    except ServiceError as exc:
        record.fail(exc)
        if exc.status != 499:
            await send_error(send, exc, record.headers)
        return
    try:
        client = ClientWatch(receive)  # a client that goes away cancels the upstream request
        try:
            await _respond(service, writes, record, client, body, send)
        finally:
            client.finish()
    finally:
        service.gate.leave()


async def _respond(
    service: ChatService,
    writes: WriteBatch | None,
    record: RequestRecord,
    client: ClientWatch,
    body: bytes,
    send: Send,
) -> None:
    try:
        answer = await service.answer(parse_request(body), record)
        if isinstance(answer, Streamed):
            if not await stream_frames(send, answer, client, record.headers, writes):
                record.status = 499  # the client went away before the end
            return
        # Encoded inside the error handling: an encoding failure is a 500, not a torn answer.
        doc = orjson.dumps(answer)
    except ServiceError as exc:
        record.fail(exc)
        if exc.status >= 500:
            log.warning("POST %s -> %d: %s", PATH, exc.status, exc.message)
        if exc.status != 499:
            await send_error(send, exc, record.headers)
        return
    except asyncio.CancelledError:
        # The client went away (nothing to send), or shutdown's drain timeout ended: others
        # than streams (which end themselves in stream_frames) get a 503.
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
    headers = JSON_HEADERS + record.headers
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": doc})
    client.finish()


async def stream_frames(
    send: Send,
    streamed: Streamed,
    client: ClientWatch,
    extra: list[tuple[bytes, bytes]] | None = None,
    writes: WriteBatch | None = None,
) -> bool:
    """The SSE response: the first frame, then the relay's frames until its end. Given
    ``writes`` and under uvicorn, frames are written from the model server connection's
    callback while the client keeps up (``http.push``). A client that goes away cancels this
    task (``ClientWatch``); the relay is always closed, which closes the upstream response,
    so the model server stops generating at once. False when the client went away."""
    headers = _SSE_HEADERS + extra if extra else _SSE_HEADERS
    relay = streamed.relay
    out = ResponseOut(send, None)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": streamed.first, "more_body": True})
        out = ResponseOut(send, direct_writer(send, writes) if writes is not None else None)
        await relay.run(out)
        await out.send(b"", last=True)
        client.finish()  # receive() says "disconnect" once the response is complete
    except OSError:
        return False  # the client went away (some servers raise on send)
    except asyncio.CancelledError:
        _uncancel()  # our own cancellation: the client left, or the drain timeout ended
        if client.gone:
            return False
        end = OpenAIChunkEncoder.error(shutting_down()) + DONE  # an error event, a clean end
        with contextlib.suppress(OSError):
            await out.send(end, last=True)
        client.finish()
    finally:
        await relay.aclose()
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
    state = request.app.state
    service: ChatService = state.service
    writes: WriteBatch | None = state.writes

    def handler(scope: Scope, receive: Receive, send: Send) -> Any:
        return handle_chat(service, writes, scope, receive, send)

    return _ASGIResponse(handler)
