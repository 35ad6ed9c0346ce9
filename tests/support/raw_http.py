"""Small HTTP servers on 127.0.0.1 that answer with exact bytes (``asyncio.start_server``),
and a ``StreamPool`` to read them with: for the streaming transport's tests, where the quirks
a real model server shows only sometimes must happen on cue."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from llm_service.upstream.wire import StreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One whole request (head and Content-Length body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serve(handler: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = handler(server)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


@asynccontextmanager
async def pool() -> AsyncIterator[StreamPool]:
    p = StreamPool(ssl_context=ssl.create_default_context(), connect_timeout=2.0)
    try:
        yield p
    finally:
        p.close()


def keep_alive_sse(server: Server, *, close_after: int | None = None) -> Handler:
    """Answers every request on the connection with a 3-event SSE stream (chunked)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            server.requests.append(await read_request(reader))
            writer.write(SSE_HEAD)
            for i in range(3):
                writer.write(chunk(b'data: {"n":%d}\n\n' % i))
                await writer.drain()
            writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            served += 1
            if close_after is not None and served >= close_after:
                return  # the connection closes while the client keeps it as idle

    return handler


def reply_once(data: bytes, *, hold: bool = False) -> Callable[[Server], Handler]:
    """Answers one request with ``data``, then closes the connection, or with ``hold``
    stays silent until the client closes it."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(data)
            await writer.drain()
            if hold:
                await reader.read()

        return handler

    return make


def flood(piece: bytes, count: int) -> Callable[[Server], Handler]:
    """Answers one request with ``count`` chunks of ``piece``, written as fast as the socket
    takes them."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(SSE_HEAD)
            for _ in range(count):
                writer.write(chunk(piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        return handler

    return make
