"""What a model server's failures become: one error class per kind of fault.

The ``Replica*`` classes mark faults of one replica that another may not have (it is down,
overloaded, or broke before answering): the failover tries the next replica for those and
for nothing else.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_service.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_status_error,
)


class ReplicaUnavailable(UpstreamUnavailable):
    """This replica is unreachable or overloaded (connect error, 429, 503): another may answer."""


class ReplicaTimeout(UpstreamTimeout):
    """Connecting to this replica timed out: another may answer."""


class ReplicaFailed(UpstreamError):
    """This replica failed (500, 502, the stream broke before its first chunk)."""


REPLICA_FAULTS = (ReplicaUnavailable, ReplicaTimeout, ReplicaFailed)


def message_of(parsed: Any, raw: bytes) -> str:
    """The error message in vLLM's, OpenAI's, TGI's or llama.cpp's error shape."""
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


def status_error(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    """The error for a model server that answered ``status`` with ``body``."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    message = f"model server answered {status}: {message_of(parsed, body)}"
    if status in (429, 503):
        return ReplicaUnavailable(message, retry_after=retry_after or "1")
    if status in (500, 502):
        return ReplicaFailed(message)
    return upstream_status_error(status, message, retry_after)


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
