"""Request bodies in and JSON error bodies out, for the routes that read raw ASGI."""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from llm_service.errors import ServiceError

JSON_HEADERS = [(b"content-type", b"application/json")]
SHOWN_TYPE = 100  # characters of a refused content type quoted back


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes; 415 before reading it
    when the request says it is not JSON."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ServiceError(
                f"request body is {int(value)} bytes; the limit is {limit}",
                status=413,
                type="invalid_request_error",
                param="body",
            )
        if name == b"content-type":
            check_json_type(value)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServiceError("client disconnected", status=499, type="client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ServiceError(
                f"request body exceeds the limit of {limit} bytes",
                status=413,
                type="invalid_request_error",
                param="body",
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_json_type(value: bytes) -> None:
    """415 unless ``value`` is ``application/json`` or ``application/*+json`` (parameters
    such as charset allowed). A request without the header is read as JSON: some clients
    send none. A form or a text body is refused instead of being parsed as something else."""
    media = value.split(b";", 1)[0].strip().lower()
    if media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    ):
        return
    shown = value.decode("latin-1")[:SHOWN_TYPE]
    raise ServiceError(
        f"content-type {shown!r} is not JSON; send application/json",
        status=415,
        type="invalid_request_error",
        param="content-type",
    )


async def send_error(
    send: Send, exc: ServiceError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """``exc`` as a whole JSON response (its status, its body, ``Retry-After``)."""
    headers = JSON_HEADERS + extra if extra else list(JSON_HEADERS)
    if exc.retry_after:
        headers.append((b"retry-after", exc.retry_after.encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(exc.body())})
