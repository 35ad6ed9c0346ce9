"""The FastAPI application: thin routes over the serving layer, resources owned by the lifespan.

Nothing is created at import time: ``create_app(settings)`` builds the app, and its lifespan
starts the embedded model server when no endpoint is configured, opens the upstream
connection pool, and closes both on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import SecretStr, TypeAdapter
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_service import __version__
from llm_service.chain import build_prompt_step
from llm_service.http import chat, errors, health, langserve, metrics
from llm_service.http.auth import InboundAuth
from llm_service.http.push import WriteBatch
from llm_service.observability import build_observability
from llm_service.observability.asgi import ObservedRoutes
from llm_service.protocol.opea import ChatRequest
from llm_service.rag import PromptLibrary
from llm_service.serving.chat import ChatService
from llm_service.settings import Settings
from llm_service.upstream import build_client
from llm_service.upstream.embedded import EmbeddedServer, new_api_key
from llm_service.upstream.readiness import wait_until_answers

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    middleware: Sequence[Middleware] = (),
    hot_path: bool = True,
    span_exporter: Any = None,
) -> FastAPI:
    """The service as an ASGI app. ``settings`` default to ``Settings.load()``.

    ``middleware``: ASGI middleware (Starlette's ``Middleware(cls, *args, **kwargs)``, the
    first outermost) around the whole app, every route included: CORS, GZip, a deployer's
    own auth. Middleware added with FastAPI's ``add_middleware`` misses the chat route's hot
    path. When a middleware wraps ``send``, the chat route's frames all go through it (the
    push writer is used only when ``send`` is uvicorn's own, see ``http.push``).
    ``hot_path`` runs ``POST /v1/chat/completions`` ahead of FastAPI's middleware stack
    (same handler, fewer layers per relayed chunk); False runs it as an ordinary FastAPI
    route. ``span_exporter`` (an OpenTelemetry ``SpanExporter``) turns tracing on without
    an OTLP endpoint, e.g. the SDK's ``InMemorySpanExporter`` in tests.
    """
    settings = settings or Settings.load()
    # Fail before serving anything if a prompt template is unusable.
    PromptLibrary.load(settings.prompts_dir, settings.prompt_template)
    state: dict[str, Any] = {}  # what the lifespan started, for metrics read at scrape time
    observability = build_observability(
        settings,
        embedded_state=lambda: _embedded_state(settings, state.get("embedded")),
        endpoint=lambda: state.get("endpoint", ""),
        span_exporter=span_exporter,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded: EmbeddedServer | None = None
        endpoint = settings.model_server_endpoint
        served = settings  # the settings the model-server side is built from
        if endpoint is None:
            embedded = EmbeddedServer(
                settings.embedded_model_path,
                alias=settings.model_name,
                n_ctx=settings.embedded_n_ctx,
                startup_timeout=settings.embedded_startup_timeout,
                api_key=new_api_key(),  # only this process knows it
            )
            state["embedded"] = embedded
            endpoint = await embedded.start()
            # Every model-server call (the upstream client, ChatOpenAI) sends the child's key
            # as its static key; a key or OAuth set for a remote server never goes to it. The
            # child listens on 127.0.0.1: a proxy set for remote servers is not for it.
            served = settings.model_copy(
                update={
                    "vllm_api_key": SecretStr(embedded.api_key or ""),
                    "upstream_trust_env": False,
                }
            )
        state["endpoint"] = endpoint
        client = build_client(served, endpoint)
        await client.start()
        app.state.service = ChatService(
            served, client, build_prompt_step(served, client), observability=observability
        )
        app.state.embedded = embedded
        # The model server may come up after us; wait for it in the background (liveness
        # is up at once, /v1/ready says 503 until the model server answers).
        waiter = (
            asyncio.create_task(wait_until_answers(client, settings.startup_wait))
            if settings.startup_wait > 0
            else None
        )
        tune_gc()
        try:
            yield
        finally:
            if waiter is not None:
                waiter.cancel()
            # Requests cut by the drain timeout write their error event before the pool closes.
            await app.state.service.gate.wait_idle(1.0)
            await client.aclose()
            if embedded is not None:
                await embedded.stop()
            observability.shutdown()

    app = ServiceApp(
        title="LLM microservice",
        version=__version__,
        description="Builds RAG prompts and relays answers from an LLM server, "
        "whole or as OpenAI chunk SSE.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry looks up global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.observability = observability
    # The push relay's client writes, one flush per event-loop pass (None: every frame
    # through ASGI send).
    app.state.writes = WriteBatch() if settings.push_relay else None
    app.include_router(chat.router)
    app.include_router(health.router)
    app.include_router(
        langserve.build_router(settings.langserve_path, playground=settings.playground_enabled)
    )
    if observability.metrics is not None:
        app.include_router(metrics.router)
    errors.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    build_stack = app.build_middleware_stack

    def observed_stack() -> Any:
        # Request ids, metrics and access lines for every route; the chat route does its own.
        return ObservedRoutes(build_stack(), observability, skip=chat.PATH)

    app.build_middleware_stack = observed_stack  # type: ignore[method-assign]
    if settings.inbound_keys:  # LLM_API_KEYS: bearer keys in front of everything but health
        build_inner = app.build_middleware_stack
        app.build_middleware_stack = lambda: InboundAuth(  # type: ignore[method-assign]
            build_inner(), settings.inbound_keys
        )
    if hot_path:

        def hot(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
            return chat.handle_chat(app.state.service, app.state.writes, scope, receive, send)

        app.hot = InboundAuth(hot, settings.inbound_keys) if settings.inbound_keys else hot
    if middleware:
        outer: ASGIApp = app.route_request
        for cls, args, kwargs in reversed(middleware):
            outer = cls(outer, *args, **kwargs)
        app.outer = outer
    return app


class ServiceApp(FastAPI):
    """FastAPI with the chat route's hot path in front of it: ``POST /v1/chat/completions``
    goes straight to ``chat.handle_chat`` (behind the API-key check when keys are set),
    without FastAPI's and Starlette's ``__call__`` and the middleware stack. Every relayed
    token resumes the request's whole await chain, so each level left out counts."""

    hot: ASGIApp | None = None
    outer: ASGIApp | None = None
    """The deployer's middleware around ``route_request`` (``create_app(middleware=...)``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.outer or self.route_request)(scope, receive, send)

    def route_request(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The hot path or FastAPI. A plain function returning the handler's awaitable:
        no coroutine frame of its own for each relayed chunk to resume through."""
        hot = self.hot
        if (
            hot is not None
            and scope["type"] == "http"
            and scope["path"] == chat.PATH
            and scope["method"] == "POST"
        ):
            return hot(scope, receive, send)
        return super().__call__(scope, receive, send)


def _embedded_state(settings: Settings, embedded: EmbeddedServer | None) -> str:
    if not settings.embedded:
        return "disabled"
    return "starting" if embedded is None else embedded.state


def tune_gc() -> None:
    """Fewer, cheaper garbage collections while serving.

    Start-up objects (modules, schemas, templates) move to the permanent generation, and
    collections run after 50,000 net allocations instead of 700: relaying creates many
    short-lived, acyclic objects that reference counting frees anyway, and every collection
    pauses every stream (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus ``ChatRequest``, which the route parses from raw bytes."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        defs = TypeAdapter(ChatRequest).json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["ChatRequest"] = defs
        app.openapi_schema = schema
    return app.openapi_schema
