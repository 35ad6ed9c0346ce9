"""Both streaming transports (``LLM_UPSTREAM_TRANSPORT``: ``wire.StreamPool`` and
``aiohttp_stream.AiohttpStreamPool``) keep one contract, checked here against the same real
sockets (``tests.support.raw_http``): what ``open``, ``read``, ``pump`` and ``release`` do,
and which of ``wire``'s exceptions each fault raises. The service-level suites (faults,
timeouts, replicas, TLS, auth, limits, disconnects) run over both transports as well;
``test_wire.py`` covers what only the lean transport has (its buffer and pausing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from llm_service.upstream.aiohttp_stream import AiohttpStreamPool
from llm_service.upstream.client import Transport, UpstreamClient
from llm_service.upstream.stream import StreamResponse, StreamTransport
from llm_service.upstream.wire import (
    BadResponse,
    ConnectFailed,
    ReadTimeout,
    StreamPool,
    WireError,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.raw_http import (
    SSE_HEAD,
    Handler,
    Server,
    chunk,
    flood,
    keep_alive_sse,
    read_request,
    reply_once,
    serve,
)
from tests.support.servers import FakeServer, ServiceServer, settings_for


@asynccontextmanager
async def pool(transport: str, limit: int = 2048) -> AsyncIterator[StreamTransport[Any]]:
    """The client's streaming transport as ``LLM_UPSTREAM_TRANSPORT=transport`` builds it."""
    kind: Transport = "lean" if transport == "lean" else "aiohttp"
    client = UpstreamClient(
        "http://127.0.0.1:1", connect_timeout=2.0, connections=limit, transport=kind
    )
    p = client._new_stream_transport()
    assert isinstance(p, StreamPool if transport == "lean" else AiohttpStreamPool)
    try:
        yield p
    finally:
        await p.aclose()


async def read_all(conn: StreamResponse) -> bytes:
    parts = []
    while part := await conn.read():
        parts.append(part)
    return b"".join(parts)


async def body_of(p: StreamTransport[Any], url: str, **headers: str) -> bytes:
    conn = await p.open(url, b'{"stream":true}', headers, total=5.0)
    try:
        assert conn.status == 200
        return await read_all(conn)
    finally:
        p.release(conn)


async def test_a_stream_is_read_whole_and_its_connection_reused(transport: str) -> None:
    async with serve(keep_alive_sse) as server, pool(transport) as p:
        first = await body_of(p, server.url, Authorization="Bearer k")
        second = await body_of(p, server.url)
    assert first == second
    assert first.count(b"data: ") == 4 and first.endswith(b"data: [DONE]\n\n")
    assert server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer k\r\n" in request
    assert request.endswith(b'\r\n\r\n{"stream":true}')


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced(transport: str) -> None:
    async with serve(lambda s: keep_alive_sse(s, close_after=1)) as server, pool(transport) as p:
        await body_of(p, server.url)
        await asyncio.sleep(0.05)
        assert (await body_of(p, server.url)).endswith(b"data: [DONE]\n\n")
    assert server.connections == 2


async def test_a_body_without_length_ends_with_the_connection(transport: str) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    until_close = reply_once(head + b"data: {}\n\ndata: [DONE]\n\n")
    async with serve(until_close) as server, pool(transport) as p:
        assert await body_of(p, server.url) == b"data: {}\n\ndata: [DONE]\n\n"


async def test_a_stream_cut_short_is_an_error_not_an_end(transport: str) -> None:
    cut_short = reply_once(SSE_HEAD + chunk(b"data: {}\n\n"))
    async with serve(cut_short) as server, pool(transport) as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        assert await conn.read() == b"data: {}\n\n"
        with pytest.raises(WireError, match="before the body ended"):
            await conn.read()
        with pytest.raises(WireError):  # and stays failed
            await conn.read()
        p.release(conn)


async def test_bytes_that_are_not_http_are_bad_http(transport: str) -> None:
    garbage = reply_once(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", hold=True)
    async with serve(garbage) as server, pool(transport) as p:
        with pytest.raises(BadResponse, match="bad HTTP"):
            await p.open(server.url, b"{}", {}, total=5.0)


async def test_silence_is_an_idle_timeout_then_a_total_one(transport: str) -> None:
    stall = reply_once(SSE_HEAD + chunk(b"data: {}\n\n"), hold=True)
    async with serve(stall) as server, pool(transport) as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        conn.idle_timeout(0.2)
        assert await conn.read() == b"data: {}\n\n"
        with pytest.raises(ReadTimeout) as idle:
            await conn.read()
        assert idle.value.idle
        p.release(conn)

        conn = await p.open(server.url, b"{}", {}, total=0.3)
        await conn.read()
        with pytest.raises(ReadTimeout) as total:
            await conn.read()
        assert not total.value.idle
        p.release(conn)


async def test_a_slow_consumer_is_not_an_idle_upstream(transport: str) -> None:
    piece = b"data: " + b"x" * 1000 + b"\n\n"
    async with serve(flood(piece, 2000)) as server, pool(transport) as p:
        conn = await p.open(server.url, b"{}", {}, total=10.0)
        conn.idle_timeout(0.2)
        await asyncio.sleep(0.5)  # the consumer is busy elsewhere, well past the idle limit
        assert await read_all(conn) == piece * 2000
        p.release(conn)


async def test_pump_hands_over_until_asked_to_stop_then_read_takes_over(transport: str) -> None:
    async with serve(keep_alive_sse) as server, pool(transport) as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        pushed: list[bytes] = []

        def sink(data: bytes) -> bool:
            pushed.append(data)
            return b'"n":1' in b"".join(pushed)  # stop once the second event is in

        await conn.pump(sink)
        assert b'"n":1' in b"".join(pushed)
        rest = await read_all(conn)
        assert b"".join(pushed) + rest == (
            b'data: {"n":0}\n\ndata: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'
        )
        before = len(pushed)
        await conn.pump(sink)  # nothing left: returns at once, with nothing
        assert len(pushed) == before
        p.release(conn)
    assert server.connections == 1


async def test_pump_ends_at_a_failure_that_read_then_raises(transport: str) -> None:
    cut_short = reply_once(SSE_HEAD + chunk(b"data: {}\n\n"))
    async with serve(cut_short) as server, pool(transport) as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        pushed: list[bytes] = []

        def sink(data: bytes) -> bool:
            pushed.append(data)
            return False

        await conn.pump(sink)
        assert pushed == [b"data: {}\n\n"]
        with pytest.raises(WireError, match="before the body ended"):
            await conn.read()
        p.release(conn)


async def test_an_error_body_is_read_up_to_its_limit(transport: str) -> None:
    error = b"HTTP/1.1 500 X\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
    async with serve(reply_once(error + b"e" * 100)) as server, pool(transport) as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        assert conn.status == 500
        assert await conn.read_upto(10) == b"e" * 10
        p.release(conn)


def closes_on_second_request(server: Server) -> Handler:
    """Answers a connection's first request; reads its second and closes unanswered, as a
    server does that timed out the idle connection as the request arrived."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(await read_request(reader))
        writer.write(SSE_HEAD + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        server.requests.append(await read_request(reader))

    return handler


async def test_a_kept_alive_connection_dropped_unanswered_is_replaced_once(
    transport: str,
) -> None:
    async with serve(closes_on_second_request) as server, pool(transport) as p:
        assert await body_of(p, server.url) == b"data: [DONE]\n\n"
        assert await body_of(p, server.url) == b"data: [DONE]\n\n"  # on a new connection
    assert server.connections == 2 and len(server.requests) == 3


async def test_a_new_connection_dropped_unanswered_is_an_error(transport: str) -> None:
    async with serve(reply_once(b"")) as server, pool(transport) as p:
        with pytest.raises(WireError, match="before answering"):
            await p.open(server.url, b"{}", {}, total=5.0)
    assert server.connections == 1  # not sent again: the model may have seen it


async def test_a_refused_connection_and_header_injection(transport: str) -> None:
    async with serve(keep_alive_sse) as server:
        url = server.url
    async with pool(transport) as p:
        with pytest.raises(ConnectFailed):
            await p.open(url, b"{}", {}, total=1.0)  # nobody listens there any more
    async with serve(keep_alive_sse) as server, pool(transport) as p:
        with pytest.raises(ValueError):
            await p.open(server.url, b"{}", {"X-Request-ID": "a\r\nEvil: 1"}, total=1.0)
    assert server.requests == []


async def test_requests_past_the_limit_wait_for_a_connection(transport: str) -> None:
    held = reply_once(SSE_HEAD + chunk(b"data: {}\n\n"), hold=True)  # the answer never ends
    async with serve(held) as server, pool(transport, limit=1) as p:
        first = await p.open(server.url, b"{}", {}, total=5.0)
        second = asyncio.create_task(p.open(server.url, b"{}", {}, total=5.0))
        await asyncio.sleep(0.1)
        assert not second.done()  # waits: the one connection is in use
        assert await first.read() == b"data: {}\n\n"
        p.release(first)  # unfinished: closed, which frees the place
        conn = await asyncio.wait_for(second, 2.0)
        assert await conn.read() == b"data: {}\n\n"
        p.release(conn)
    assert server.connections == 2


async def test_informational_responses_are_skipped(transport: str) -> None:
    def early_hints(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
                writer.write(SSE_HEAD + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()

        return handler

    async with serve(early_hints) as server, pool(transport) as p:
        for _ in range(2):
            conn = await p.open(server.url, b"{}", {}, total=5.0)
            assert conn.status == 200 and "link" not in conn.headers
            assert await read_all(conn) == b"data: [DONE]\n\n"
            p.release(conn)
    assert server.connections == 1


def test_the_setting_picks_the_transport(
    fake_server: FakeServer, fake: FakeOpenAI, transport: str
) -> None:
    """The service's streams go over the transport the setting names (aiohttp says so in
    its User-Agent; the lean transport sends none)."""
    service = ServiceServer(settings_for(fake_server.url, upstream_transport=transport))
    try:
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
        resp = httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=10)
        assert resp.status_code == 200
    finally:
        service.close()
    agent = fake.headers[-1].get("User-Agent", "")
    assert ("aiohttp" in agent) == (transport == "aiohttp")
