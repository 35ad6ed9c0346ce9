"""The request being served, as seen from anywhere below the route that received it.

A ``ContextVar`` rather than an argument: log lines written deep in the upstream client or
in LangChain carry the request id without every layer passing it along, and a model call
made through the chain forwards it to the model server the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")
"""The id of the request being served (``-`` outside requests)."""

session_key: ContextVar[str | None] = ContextVar("session_key", default=None)
"""The session the request being served belongs to, from the header named by
LLM_ROUTING_SESSION_HEADER (None without it): its model calls go to one replica."""


def bind_session(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> None:
    """Set ``session_key`` from the ASGI ``headers`` field ``name`` (lower-case; empty:
    no session header)."""
    if not name:
        return
    for field, value in headers:
        if field == name:
            if value:
                session_key.set(value.decode("latin-1"))
            return


def upstream_headers() -> dict[str, str] | None:
    """The current request's id for the model server (None outside a request)."""
    rid = request_id.get()
    return None if rid == "-" else {"X-Request-ID": rid}
