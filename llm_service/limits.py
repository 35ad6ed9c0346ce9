"""Reliability and security at the door: concurrency cap, input limits, inbound API keys,
and the error a stream ends with when a shutdown cuts it.

All of it is per-request work (a counter, a header scan, a sum of lengths); nothing here
runs per relayed chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_service.errors import InvalidRequest, ServiceError
from llm_service.schemas import ChatRequest
from llm_service.settings import Settings

OPEN_PATHS = frozenset({"/v1/health_check", "/v1/ready"})
"""Routes that answer without an API key (probes of orchestrators carry none)."""


def shutting_down() -> ServiceError:
    """What a request still running when the drain timeout ends gets."""
    return ServiceError(
        "the service is shutting down; retry on another instance",
        status=503,
        type="service_unavailable",
        retry_after="1",
    )


class Gate:
    """Caps concurrent chat requests: past ``limit`` the next one gets 429 at once.

    No queue: a caller (or its load balancer) retries after ``Retry-After`` seconds, or on
    another instance, instead of waiting here without bound. ``limit`` 0 means no cap; the
    count is kept anyway, so shutdown can wait for in-flight requests.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """Count one more request, or raise 429 when the cap is reached."""
        if self.limit and self.active >= self.limit:
            raise ServiceError(
                f"too many concurrent requests (limit {self.limit}); retry later",
                status=429,
                type="rate_limit_error",
                retry_after="1",
            )
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self._idle.set()

    async def wait_idle(self, limit_s: float) -> bool:
        """True when no request is in flight within ``limit_s`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), limit_s)
        except TimeoutError:
            return False
        return True


class ClientWatch:
    """Cancels the request's task the moment the client goes away.

    uvicorn does not fail a ``send`` to a closed connection (it drops the bytes), so
    without this a stream would run to its end for nobody. One task per request waits on
    ``receive()`` for ``http.disconnect``; nothing is added per chunk. ``finish()`` must be
    called right after the response's last send (before any other await), since ``receive``
    also says ``http.disconnect`` once the response is complete.
    """

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._active = True
        self._request = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server whose receive fails after the response: nothing to do
            return
        if self._active and self._request is not None:
            self.gone = True
            self._request.cancel()

    def finish(self) -> None:
        """The response is complete (or abandoned): stop watching. The references to both
        tasks are dropped, so that the cancelled watcher (its CancelledError holds its frame,
        which holds this object) forms no reference cycle: per request, nothing is left for
        the cyclic garbage collector, whose pauses delay every stream (docs/performance.md)."""
        self._active = False
        watcher, self._watcher = self._watcher, None
        self._request = None
        if watcher is not None:
            watcher.cancel()


def check_input(request: ChatRequest, settings: Settings) -> None:
    """422 naming the field when a request holds more than the configured limits."""
    messages = len(request.messages or ()) + len(request.history)
    if messages > settings.max_messages:
        field = "messages" if request.messages else "history"
        raise InvalidRequest(
            f"{field}: {messages} messages and history turns; the limit is {settings.max_messages}",
            param=field,
        )
    docs = len(request.reranked_docs)
    if docs > settings.max_documents:
        raise InvalidRequest(
            f"reranked_docs: {docs} documents; the limit is {settings.max_documents}",
            param="reranked_docs",
        )
    _check_echoable("data", request.data)
    _check_echoable("output_guardrail_params", request.output_guardrail_params)
    for i, doc in enumerate(request.reranked_docs):
        if doc.metadata:
            _check_echoable(f"reranked_docs.{i}.metadata", doc.metadata)
    sizes = {
        "messages": sum(len(m.content) for m in request.messages or ()),
        "question": len(request.question or ""),
        "reranked_docs": sum(len(d.text) for d in request.reranked_docs),
        "history": sum(
            len(getattr(h, "content", "")) + len(getattr(h, "question", ""))
            + len(getattr(h, "answer", ""))
            for h in request.history
        ),
    }  # fmt: skip
    total = sum(sizes.values())
    if total > settings.max_input_chars:
        field = max(sizes, key=lambda name: sizes[name])
        raise InvalidRequest(
            f"{field}: the input holds {total} characters (messages, question, documents and "
            f"history together); the limit is {settings.max_input_chars}",
            param=field,
        )


def _check_echoable(field: str, value: object) -> None:
    """Values sent back (trailer, GeneratedDoc) must encode: orjson refuses integers beyond
    64 bits, which JSON input may hold; 422 here instead of a broken answer later."""
    if value is None:
        return
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise InvalidRequest(f"{field}: {exc}; integers must fit in 64 bits", param=field) from None


class InboundAuth:
    """Pure ASGI middleware: ``Authorization: Bearer <key>`` must name one of the keys.

    Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against every key, so
    the time taken says nothing about how much of a key matched or which key it was. The
    401 says only that a valid key is needed. Health routes stay open.
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        if not keys:
            raise ValueError("InboundAuth needs at least one key")
        self.app = app
        self.digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        error = ServiceError(
            "a valid API key is required: send 'Authorization: Bearer <key>'",
            status=401,
            type="authentication_error",
        )
        self.body = orjson.dumps(error.body())

    def allowed(self, scope: Scope) -> bool:
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
                break
        presented = hashlib.sha256(token.strip()).digest()
        ok = False
        for digest in self.digests:  # no early exit: every key costs the same
            ok |= hmac.compare_digest(presented, digest)
        return ok and bool(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body})
