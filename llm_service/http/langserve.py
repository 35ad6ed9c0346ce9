"""LangServe-style routes for the chain, under ``LLM_LANGSERVE_PATH`` (default ``/llm``).

Thin: each route reads its body, hands it to ``serving.langserve.LangServeCalls`` and writes
what comes back. Event streams go out through sse-starlette's ``EventSourceResponse``, as in
LangServe itself: its comment pings keep idle proxies from cutting a long wait for the first
token, and it stops the stream when the client goes away. ``/invoke`` and ``/batch`` are
cancelled when the client goes away too (``ClientWatch``, as on the chat route).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from llm_service.http.body import read_body
from llm_service.http.disconnect import ClientWatch
from llm_service.protocol.langserve import BatchRequest, InvokeRequest, StreamEventsRequest
from llm_service.serving.chat import ChatService
from llm_service.serving.langserve import GatedStream, LangServeCalls


def _calls(request: Request) -> LangServeCalls:
    """The app's ``LangServeCalls``, made once per ``ChatService`` (the lifespan makes it)."""
    state = request.app.state
    service: ChatService = state.service
    calls: LangServeCalls | None = getattr(state, "langserve_calls", None)
    if calls is None or calls.service is not service:
        calls = state.langserve_calls = LangServeCalls(service)
    return calls


async def _body(request: Request) -> bytes:
    """The raw body: 413 past ``LLM_MAX_BODY_BYTES``."""
    return await read_body(
        request.scope, request.receive, request.app.state.settings.max_body_bytes
    )


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def _while_connected(request: Request, call: Callable[[bytes], Awaitable[bytes]]) -> Response:
    """``call`` on the body, cancelled the moment the client goes away (``ClientWatch``), as
    on every other route: the model server's request is cut and the place under
    ``LLM_MAX_CONCURRENT`` given back at once, not when an answer nobody reads is complete."""
    body = await _body(request)
    client = ClientWatch(request.receive)
    try:
        return _json(await call(body))
    except asyncio.CancelledError:
        if not client.gone:
            raise  # not ours: a shutdown, the server's own cancellation
        # Our own cancellation, ended here: the server sees a finished response (for nobody).
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return Response(status_code=499)
    finally:
        client.finish()


def _sse(stream: GatedStream, request: Request) -> EventSourceResponse:
    return EventSourceResponse(
        stream.frames,
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        background=BackgroundTask(stream.release),
        # A shutdown lets streams run for the drain time, as on the chat route.
        shutdown_grace_period=request.app.state.settings.drain_timeout,
    )


def playground_html(path: str) -> str:
    """The playground page (package data), pointed at the OpenAI route relative to
    ``<path>/playground``, so that a reverse proxy's prefix keeps working."""
    page = resources.files("llm_service.http").joinpath("static/playground.html")
    api = "../" * path.count("/") + "v1/chat/completions"
    return page.read_text(encoding="utf-8").replace("__API_URL__", api)


def playground_headers(page: str) -> dict[str, str]:
    """Security headers of the playground page: a Content-Security-Policy that runs only its
    own inline script and style (by their sha256, computed here from the page as served),
    fetches only from this origin, and lets no other page frame it."""

    def digest(tag: str) -> str:
        start = page.index(f"<{tag}>") + len(tag) + 2
        body = page[start : page.index(f"</{tag}>", start)]
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    policy = "; ".join(
        [
            "default-src 'self'",
            f"script-src {digest('script')}",
            f"style-src {digest('style')}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "content-security-policy": policy,
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for a route that parses its raw body itself."""
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": schema}}


def build_router(path: str, *, playground: bool) -> APIRouter:
    """The routes under ``path`` (``LLM_LANGSERVE_PATH``)."""
    router = APIRouter(prefix=path, tags=["langserve"])

    @router.post(
        "/invoke",
        openapi_extra=_openapi_body(InvokeRequest),
        summary="Run the chain once: {input, config, kwargs} -> {output}",
    )
    async def invoke(request: Request) -> Response:
        return await _while_connected(request, _calls(request).invoke)

    @router.post(
        "/batch",
        openapi_extra=_openapi_body(BatchRequest),
        summary="Run the chain on several inputs: {inputs, config}",
    )
    async def batch(request: Request) -> Response:
        return await _while_connected(request, _calls(request).batch)

    @router.post(
        "/stream",
        openapi_extra=_openapi_body(InvokeRequest),
        summary="Stream the answer's message chunks as LangServe SSE",
    )
    async def stream(request: Request) -> EventSourceResponse:
        return _sse(_calls(request).stream(await _body(request)), request)

    @router.post(
        "/stream_events",
        openapi_extra=_openapi_body(StreamEventsRequest),
        summary="Stream the chain's runnable events (v2) as SSE",
    )
    async def stream_events(request: Request) -> EventSourceResponse:
        return _sse(_calls(request).stream_events(await _body(request)), request)

    @router.get("/input_schema", summary="JSON schema of the chain's input")
    async def input_schema() -> JSONResponse:
        return JSONResponse(LangServeCalls.input_schema())

    @router.get("/output_schema", summary="JSON schema of the chain's output")
    async def output_schema(request: Request) -> JSONResponse:
        return JSONResponse(_calls(request).output_schema())

    @router.get("/config_schema", summary="JSON schema of config.configurable (the knobs)")
    async def config_schema(request: Request) -> JSONResponse:
        return JSONResponse(_calls(request).config_schema())

    if playground:
        page = playground_html(path)
        headers = playground_headers(page)

        @router.get("/playground", summary="The playground page", response_class=HTMLResponse)
        async def playground_page() -> HTMLResponse:
            return HTMLResponse(page, headers=headers)

    return router
