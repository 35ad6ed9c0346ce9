"""What a model server's failures become: one error class per kind of fault.

The ``Replica*`` classes mark faults of one replica that another may not have (it is down,
overloaded, or broke before answering): the failover tries the next replica for those and
for nothing else.

Messages name the kind of fault ("model server unreachable (connection refused)", "model
server sent bad HTTP"): addresses, OS and parser text go to the log only. Whatever the
server wrote (an error message) goes through the client's ``Redactor`` first.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any

import orjson

from llm_service.errors import (
    InvalidRequest,
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_status_error,
)
from llm_service.upstream.redact import Redactor

log = logging.getLogger(__name__)

Redact = Callable[[str], str]
"""Scrubs text that came from the model server (``Redactor``)."""


class ReplicaUnavailable(UpstreamUnavailable):
    """This replica is unreachable or overloaded (connect error, 429, 503): another may answer."""


class ReplicaTimeout(UpstreamTimeout):
    """Connecting to this replica timed out: another may answer."""


class ReplicaFailed(UpstreamError):
    """This replica failed (500, 502, the stream broke before its first chunk)."""


REPLICA_FAULTS = (ReplicaUnavailable, ReplicaTimeout, ReplicaFailed)


def message_of(parsed: Any, raw: bytes, redact: Redact | None = None) -> str:
    """The error message in vLLM's, OpenAI's, TGI's or llama.cpp's error shape, scrubbed
    by ``redact`` (a ``Redactor`` without configured secrets when None) and cut short."""
    return (redact or Redactor())(_message_in(parsed, raw))


def _message_in(parsed: Any, raw: bytes) -> str:
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if "detail" in parsed:
            return str(parsed["detail"])
    return raw[:300].decode("utf-8", "replace") or "(empty body)"


# How model servers say the prompt (with max_tokens) does not fit the context window:
# vLLM and OpenAI ("This model's maximum context length is N tokens. However, you requested
# M tokens"; vLLM's "... is longer than the maximum model length"), llama.cpp's server
# ("exceeds the available context size") and llama-cpp-python's ("Requested tokens (M)
# exceed context window of N"), TGI ("`inputs` tokens + `max_new_tokens` must be <= N",
# "`inputs` must have less than N tokens").
_PROMPT_TOO_LONG = re.compile(
    r"maximum context length|context_length_exceeded|longer than the maximum model length"
    r"|exceeds? (the )?(available )?context (window|size)|exceed_context_size"
    r"|`inputs` tokens \+ `max_new_tokens` must be"
    r"|`inputs` must have less than \d+ tokens",
    re.IGNORECASE,
)


def prompt_too_long(status: int, message: str) -> InvalidRequest | None:
    """A 400 for the client when the model server refused the prompt as longer than its
    context window, as the reference answers: the client can shorten it, retrying cannot
    help, and the server is not at fault. None for any other refusal. TGI refuses with 422."""
    if status not in (400, 422) or not _PROMPT_TOO_LONG.search(message):
        return None
    return InvalidRequest(
        f"messages: the prompt does not fit the model's context window: {message}",
        status=400,
        param="messages",
    )


def status_error(
    status: int, body: bytes, retry_after: str | None, redact: Redact | None = None
) -> ServiceError:
    """The error for a model server that answered ``status`` with ``body`` (the start of
    it: error bodies are read up to ``bounded.ERROR_BODY_BYTES``)."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    said = message_of(parsed, body, redact)
    too_long = prompt_too_long(status, said)
    if too_long is not None:
        return too_long
    message = f"model server answered {status}: {said}"
    if retry_after is not None and (len(retry_after) > 32 or not retry_after.isprintable()):
        retry_after = None  # relayed to the client as a header: only a sane value
    if status in (429, 503):
        return ReplicaUnavailable(message, retry_after=retry_after or "1")
    if status in (500, 502):
        return ReplicaFailed(message)
    return upstream_status_error(status, message, retry_after)


def redirected(status: int) -> UpstreamError:
    """A 3xx: following it would send the prompt and the credentials elsewhere."""
    return UpstreamError(f"model server answered {status} (redirects are not followed)")


def too_large(limit: int) -> UpstreamError:
    return UpstreamError(
        f"model server reply exceeds {limit} bytes (LLM_MAX_UPSTREAM_RESPONSE_BYTES)"
    )


def unreachable(
    os_error: BaseException | None, redact: Redact | None, *, reason: str | None = None
) -> ReplicaUnavailable:
    """No connection: the kind of fault (``reason``, else one read from ``os_error``) for
    the client, the details (addresses) for the log only."""
    log.debug("model server unreachable: %s", (redact or Redactor())(str(os_error)))
    return ReplicaUnavailable(f"model server unreachable ({reason or os_reason(os_error)})")


def bad_http(detail: object, redact: Redact | None) -> ReplicaFailed:
    """The model server's reply is not HTTP, or its head is past the limits: the parser's
    text goes to the log, not to the client."""
    log.warning("model server sent bad HTTP: %s", (redact or Redactor())(str(detail)))
    return ReplicaFailed("model server sent bad HTTP")


def broke(detail: object, redact: Redact | None, what: str = "connection") -> ReplicaFailed:
    """The connection (or the ``what``) closed or reset before the reply ended."""
    log.debug("model server %s broke: %s", what, (redact or Redactor())(str(detail)))
    return ReplicaFailed(f"model server {what} broke")


_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out",
}


def os_reason(exc: BaseException | None) -> str:
    """A short reason for a failed connection, without addresses."""
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return "connection failed"


def connect_timeout(seconds: float) -> ReplicaTimeout:
    return ReplicaTimeout(
        f"timed out connecting to the model server (LLM_CONNECT_TIMEOUT={seconds:g} s)"
    )


def untrusted(detail: object) -> UpstreamError:
    return UpstreamError(
        f"model server's TLS certificate is not trusted ({detail}); "
        "set LLM_TLS_CA_BUNDLE to its CA (or LLM_TLS_SKIP_VERIFY=True)"
    )


def request_timeout(limit: str) -> UpstreamTimeout:
    return UpstreamTimeout(f"model server did not answer within {limit}")
