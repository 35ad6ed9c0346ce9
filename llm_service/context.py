"""The request being served, as seen from anywhere below the route that received it.

A ``ContextVar`` rather than an argument: log lines written deep in the upstream client or
in LangChain carry the request id without every layer passing it along, and a model call
made through the chain forwards it to the model server the same way.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")
"""The id of the request being served (``-`` outside requests)."""


def upstream_headers() -> dict[str, str] | None:
    """The current request's id for the model server (None outside a request)."""
    rid = request_id.get()
    return None if rid == "-" else {"X-Request-ID": rid}
