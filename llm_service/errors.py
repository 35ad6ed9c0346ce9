"""Errors with a defined HTTP status and one JSON shape.

Every error the service returns looks like OpenAI's (so the openai SDK raises a typed
exception with the message)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages", "code": 422}}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_MESSAGE_CHARS = 1000
"""What of an outside text (an exception's) an error message shows at most."""


class ServiceError(Exception):
    """An error that maps to an HTTP status and an error body."""

    status: int = 500
    type: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": self.retry_after} if self.retry_after else None


class InvalidRequest(ServiceError):
    """Bad input: 422, naming the field."""

    status = 422
    type = "invalid_request_error"


class UpstreamError(ServiceError):
    """The model server refused (502), is unavailable (503) or timed out (504)."""

    status = 502
    type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


def detached(exc: ServiceError) -> ServiceError:
    """``exc`` without the traceback and the chained exceptions it was raised with.

    An error kept after its request was handled (in the request's record, in the answer
    for logs and metrics) would otherwise keep every frame it was raised through alive,
    with what they hold (a cut-off reply's buffers), in a reference cycle that only the
    cyclic garbage collector frees: the service runs it rarely (``http.app.tune_gc``).
    """
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc


def upstream_status_error(
    status: int, message: str, retry_after: str | None = None
) -> UpstreamError:
    """The error for a model server that answered ``status``."""
    if status in (429, 503):
        return UpstreamUnavailable(message, retry_after=retry_after or "1")
    if status == 504:
        return UpstreamTimeout(message)
    return UpstreamError(message)


def as_service_error(exc: Exception, redact: Callable[[str], str] | None = None) -> ServiceError:
    """A ServiceError for any exception a model step raised (e.g. ChatOpenAI's openai errors).

    The exception's text may hold what the model server sent (an echoed key): it goes
    through ``redact`` (the upstream client's ``Redactor``) when given, and is cut at
    ``MAX_MESSAGE_CHARS`` either way."""
    if isinstance(exc, ServiceError):
        return exc
    text = str(exc)
    text = redact(text) if redact is not None else _cut(text)
    kind = type(exc).__name__
    if isinstance(exc, TimeoutError) or kind == "APITimeoutError":
        return UpstreamTimeout(f"model server timed out: {text}")
    if kind == "APIConnectionError" or isinstance(exc, ConnectionError):
        return UpstreamUnavailable(f"model server unreachable: {text}")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        return upstream_status_error(status, f"model server answered {status}: {text}", retry_after)
    return UpstreamError(f"model call failed: {kind}: {text}")


def _cut(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[:MAX_MESSAGE_CHARS] + "... (truncated)"
