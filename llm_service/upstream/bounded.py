"""Reading aiohttp replies within a size limit: nothing a model server or a token endpoint
sends is held in memory past its cap.

aiohttp's own buffer stops reading from the socket once it holds ``read_bufsize`` bytes
that nobody took, so reading piece by piece and counting keeps memory at the cap plus one
buffer, however much the server sends.
"""

from __future__ import annotations

import asyncio

import aiohttp

ERROR_BODY_BYTES = 64 * 1024
"""Of an error reply (status >= 400) only this much is read: its message is in the first
bytes, and the rest is never shown to anyone (messages are cut at 1,000 characters)."""

ERROR_BODY_SECONDS = 5.0
"""An error reply's body is read for at most this long: servers send it at once."""


class TooLarge(Exception):
    """The reply is longer than the limit it was read with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"reply exceeds {limit} bytes")
        self.limit = limit


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or ``TooLarge`` as soon as it passes ``limit`` bytes (a declared
    ``Content-Length`` past it fails before reading)."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise TooLarge(limit)
    parts: list[bytes] = []
    size = 0
    content = resp.content
    while piece := await content.readany():
        size += len(piece)
        if size > limit:
            # Dropped before raising: the error's traceback keeps this frame alive for as
            # long as anything keeps the error.
            parts.clear()
            raise TooLarge(limit)
        parts.append(piece)
    return b"".join(parts)


async def read_error_body(resp: aiohttp.ClientResponse) -> bytes:
    """At most ``ERROR_BODY_BYTES`` of an error reply, whatever arrived within
    ``ERROR_BODY_SECONDS`` (a body that breaks off gives what came before)."""
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(ERROR_BODY_SECONDS):
            while size < ERROR_BODY_BYTES:
                piece = await resp.content.read(ERROR_BODY_BYTES - size)
                if not piece:
                    break
                parts.append(piece)
                size += len(piece)
    except (aiohttp.ClientError, TimeoutError):
        pass
    return b"".join(parts)
