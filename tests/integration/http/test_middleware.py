"""A deployer's ASGI middleware (``create_app(middleware=...)``) wraps every route, the chat
route's hot path included, and sees every byte of a streamed answer when it wraps ``send``.

The service runs under uvicorn (httptools, as in production) in front of the fake model
server; the middleware are Starlette's ``CORSMiddleware`` and ``SendTap`` below, which adds a
header and counts the body bytes each response sends through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_service.http.push import DirectWriter
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames

CHAT = "/v1/chat/completions"
ORIGIN = "https://rag.example"
KEY = "mw-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


class SendTap:
    """Wraps ``send``: adds ``x-tap: on`` to the head and counts each response's body bytes
    by its request's ``X-Request-ID``."""

    def __init__(self, app: ASGIApp, seen: dict[str, int]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode()
        self.seen[rid] = 0

        async def tapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-tap", b"on")]
            elif message["type"] == "http.response.body":
                self.seen[rid] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, tapped)


@pytest.fixture(scope="module")
def tapped() -> dict[str, int]:
    return {}


@pytest.fixture(scope="module")
def wrapped(fake_server: FakeServer, tapped: dict[str, int]) -> Iterator[ServiceServer]:
    """The service with inbound API keys, CORS outermost and the tap inside it."""
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=[ORIGIN],
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
        ),
        Middleware(SendTap, seen=tapped),
    ]
    server = ServiceServer(settings_for(fake_server.url, api_keys=KEY), middleware=middleware)
    yield server
    server.close()


def body(stream: bool, text: str = "hi") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream": stream, "max_tokens": 4000}


def test_preflight_on_the_chat_route_is_answered_with_cors_headers(wrapped: ServiceServer) -> None:
    """A browser's preflight carries no credentials: CORS answers it before the key check."""
    resp = httpx.options(
        f"{wrapped.url}{CHAT}",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"].lower()
    refused = httpx.options(
        f"{wrapped.url}{CHAT}",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_streamed_and_whole_answers_carry_the_cors_header(
    wrapped: ServiceServer, fake: FakeOpenAI
) -> None:
    headers = {"Origin": ORIGIN, **AUTH}
    with httpx.stream("POST", f"{wrapped.url}{CHAT}", json=body(True), headers=headers) as resp:
        text = resp.read().decode()
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == ORIGIN
        assert resp.headers["content-type"].startswith("text/event-stream")
    frames = parse_frames(text)
    assert content_of(frames) == "Deep learning is great." and frames[-1].raw == "[DONE]"
    whole = httpx.post(f"{wrapped.url}{CHAT}", json=body(False), headers=headers)
    assert whole.status_code == 200
    assert whole.headers["access-control-allow-origin"] == ORIGIN
    assert whole.json()["text"] == "Deep learning is great."
    # Errors of the route (here the key check, behind the middleware) carry it too.
    refused = httpx.post(f"{wrapped.url}{CHAT}", json=body(False), headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    # And FastAPI's routes.
    health = httpx.get(f"{wrapped.url}/v1/health_check", headers={"Origin": ORIGIN})
    assert health.status_code == 200
    assert health.headers["access-control-allow-origin"] == ORIGIN


def test_a_send_wrapping_middleware_sees_every_streamed_byte(
    wrapped: ServiceServer, fake: FakeOpenAI, tapped: dict[str, int]
) -> None:
    """A long answer, in bursts of many chunks per model-server write: without middleware
    these frames would be pushed to the socket from the model server connection's callback;
    with one that wraps ``send``, every frame goes through it."""
    tokens = [f" t{i:04d}" for i in range(3000)]
    fake.push(Script(tokens=tokens, tokens_per_write=50))
    headers = {**AUTH, "X-Request-ID": "tap-stream"}
    with httpx.stream("POST", f"{wrapped.url}{CHAT}", json=body(True), headers=headers) as resp:
        raw = resp.read()
        assert resp.status_code == 200
        assert resp.headers["x-tap"] == "on"
    frames = parse_frames(raw.decode())
    assert content_of(frames) == "".join(tokens) and frames[-1].raw == "[DONE]"
    assert tapped["tap-stream"] == len(raw)  # the tap saw the whole body
    whole = httpx.post(
        f"{wrapped.url}{CHAT}", json=body(False), headers={**AUTH, "X-Request-ID": "tap-whole"}
    )
    assert whole.headers["x-tap"] == "on"
    assert tapped["tap-whole"] == len(whole.content) > 0


def test_push_is_used_without_middleware_only(
    service: ServiceServer, wrapped: ServiceServer, fake: FakeOpenAI, monkeypatch: Any
) -> None:
    """The control: the same long answer from the service without middleware is written
    from the network callback (a ``DirectWriter``, frames outside ``send``: what the tap
    would miss); with the send-wrapping middleware no writer is made."""
    made: list[DirectWriter] = []
    original = DirectWriter.__init__

    def counting(self: DirectWriter, *args: Any) -> None:
        original(self, *args)
        made.append(self)

    monkeypatch.setattr(DirectWriter, "__init__", counting)  # watched, not replaced
    for server, writers in ((service, 1), (wrapped, 0)):
        made.clear()
        fake.push(Script(tokens=[f" t{i:04d}" for i in range(3000)], tokens_per_write=50))
        resp = httpx.post(f"{server.url}{CHAT}", json=body(True), headers=AUTH)
        assert resp.status_code == 200 and parse_frames(resp.text)[-1].raw == "[DONE]"
        assert len(made) == writers, server.url
