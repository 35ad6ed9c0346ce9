"""Inbound API keys (``LLM_API_KEYS``) in front of every route but the health probes."""

from __future__ import annotations

import hashlib
import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_service.errors import ServiceError

OPEN_PATHS = frozenset({"/v1/health_check", "/v1/ready"})
"""Routes that answer without an API key (probes of orchestrators carry none)."""


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
