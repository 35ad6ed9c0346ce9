"""The lean streaming transport (``llm_service/upstream/wire.py``) against real sockets.

Each test runs a small HTTP server on 127.0.0.1 (``tests.support.raw_http``) that answers
with exact bytes, so the quirks a real model server shows only sometimes happen on cue:
kept-alive connections closed while idle, bodies that end with the connection, streams cut
short, bytes that are not HTTP, silence, and a client that reads slower than the server
writes. What both transports must do alike is in ``test_stream_transports.py``, over both;
here what only this one has, or tests it in more detail.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from llm_service.context import request_id
from llm_service.upstream.wire import (
    ConnectFailed,
    StreamPool,
    WireError,
)
from tests.support.raw_http import (
    SSE_HEAD,
    Handler,
    Server,
    chunk,
    flood,
    keep_alive_sse,
    pool,
    read_request,
    reply_once,
    serve,
)


async def body_of(p: StreamPool, url: str, **headers: str) -> bytes:
    conn = await p.open(url, b'{"stream":true}', headers, total=5.0)
    try:
        assert conn.status == 200
        return await conn.read_all()
    finally:
        p.release(conn)


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced() -> None:
    async with (
        serve(lambda s: keep_alive_sse(s, close_after=1)) as server,
        pool() as p,
    ):
        await body_of(p, server.url)
        await asyncio.sleep(0.05)  # the server has closed the idle connection by now
        body = await body_of(p, server.url)
    assert body.endswith(b"data: [DONE]\n\n")
    assert server.connections == 2


async def test_a_body_without_length_ends_with_the_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    until_close = reply_once(head + b"data: {}\n\ndata: [DONE]\n\n")

    async with serve(until_close) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        assert await conn.read_all() == b"data: {}\n\ndata: [DONE]\n\n"
        assert not conn.reusable
        p.release(conn)


async def test_a_stream_cut_short_is_an_error_not_an_end() -> None:
    async with serve(reply_once(SSE_HEAD + chunk(b"data: {}\n\n"))) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        assert await conn.read() == b"data: {}\n\n"
        with pytest.raises(WireError, match="before the body ended"):
            await conn.read()
        p.release(conn)


async def test_bytes_that_are_not_http_are_an_error() -> None:
    garbage = reply_once(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", hold=True)

    async with serve(garbage) as server, pool() as p:
        with pytest.raises(WireError, match="bad HTTP"):
            await p.open(server.url, b"{}", {}, total=5.0)


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    piece = b"data: " + b"x" * 1000 + b"\n\n"
    count = 2000  # about 2 MB, written as fast as the socket takes it

    async with serve(flood(piece, count)) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=10.0)
        await asyncio.sleep(0.3)  # the server writes; nobody reads
        assert conn._paused and conn._buffered < 2 * 1024 * 1024
        body = await conn.read_all()
        assert body == piece * count
        assert conn.reusable
        p.release(conn)


async def test_refused_connection_and_header_injection() -> None:
    async with serve(keep_alive_sse) as server:
        url = server.url
    async with pool() as p:
        with pytest.raises(ConnectFailed):
            await p.open(url, b"{}", {}, total=1.0)  # nobody listens there any more
        with pytest.raises(ValueError, match="line break"):
            await p.open(url, b"{}", {"X-Request-ID": "a\r\nEvil: 1"}, total=1.0)


async def test_requests_past_the_limit_wait_for_a_connection() -> None:
    async with serve(keep_alive_sse) as server:
        p = StreamPool(ssl_context=ssl.create_default_context(), connect_timeout=2.0, limit=1)
        try:
            first = await p.open(server.url, b"{}", {}, total=5.0)
            second = asyncio.create_task(p.open(server.url, b"{}", {}, total=5.0))
            await asyncio.sleep(0.1)
            assert not second.done()  # waits: the one connection is in use
            await first.read_all()
            p.release(first)
            conn = await asyncio.wait_for(second, 2.0)
            await conn.read_all()
            p.release(conn)
        finally:
            p.close()
    assert server.connections == 1  # the waiting request took the released connection


async def test_a_connection_with_unread_bytes_is_not_reused() -> None:
    """The consumer stopped after the first piece while the rest (and the end) had already
    arrived: that connection is closed, and the next answer is only its own."""

    def two_parts(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(SSE_HEAD + chunk(b'data: {"n":0}\n\n'))
                await writer.drain()
                await asyncio.sleep(0.05)
                for i in (1, 2):
                    writer.write(chunk(b'data: {"n":%d}\n\n' % i))
                writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()

        return handler

    async with serve(two_parts) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        assert await conn.read() == b'data: {"n":0}\n\n'
        await asyncio.sleep(0.2)  # the rest of the body arrives and is never read
        assert conn.complete
        p.release(conn)
        body = await body_of(p, server.url)
    assert body.count(b"data: ") == 4 and body.startswith(b'data: {"n":0}')
    assert server.connections == 2


async def test_a_slow_consumer_is_not_an_idle_upstream() -> None:
    """While reading is paused because nobody reads, the idle clock does not run."""
    piece = b"data: " + b"y" * 1000 + b"\n\n"

    async with serve(flood(piece, 2000)) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=10.0)
        conn.idle_timeout(0.2)
        await asyncio.sleep(0.7)  # three idle periods without reading: paused, not silent
        assert conn._paused
        assert await conn.read_all() == piece * 2000
        p.release(conn)


async def test_informational_responses_are_skipped() -> None:
    def early_hints(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
                writer.write(SSE_HEAD + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()

        return handler

    async with serve(early_hints) as server, pool() as p:
        for _ in range(2):
            conn = await p.open(server.url, b"{}", {}, total=5.0)
            assert conn.status == 200 and "link" not in conn.headers
            assert await conn.read_all() == b"data: [DONE]\n\n"
            p.release(conn)
    assert server.connections == 1


async def test_the_pushed_body_is_handled_in_the_current_requests_context() -> None:
    """A kept-alive connection's network callbacks run in the context of the request that
    opened it; what ``pump`` hands to its sink must see the request being served now (its
    request id in the logs, its span)."""

    def paced(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                server.requests.append(await read_request(reader))
                writer.write(SSE_HEAD)
                for i in range(3):
                    await asyncio.sleep(0.02)  # each piece its own read, after pump began
                    writer.write(chunk(b'data: {"n":%d}\n\n' % i))
                    await writer.drain()
                writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()

        return handler

    seen: dict[str, list[str]] = {}

    async def one(p: StreamPool, url: str, rid: str) -> None:
        request_id.set(rid)  # this task's context, as the service's request record does
        conn = await p.open(url, b"{}", {}, total=5.0)
        seen[rid] = []

        def sink(data: bytes) -> bool:
            seen[rid].append(request_id.get())
            return False

        try:
            await conn.pump(sink)
            assert conn.complete and not await conn.read()
        finally:
            p.release(conn)

    async with serve(paced) as server, pool() as p:
        await asyncio.create_task(one(p, server.url, "request-a"))
        await asyncio.create_task(one(p, server.url, "request-b"))
    assert server.connections == 1  # B reused A's connection
    assert len(seen["request-b"]) >= 2  # pushed from the network callback, read by read
    assert set(seen["request-a"]) == {"request-a"}
    assert set(seen["request-b"]) == {"request-b"}
