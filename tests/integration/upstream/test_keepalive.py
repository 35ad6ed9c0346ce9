"""Kept-alive connections to the model server and their expiry (LLM_UPSTREAM_KEEPALIVE).

A NAT or load balancer may drop an idle connection without telling either end: the next
request sent on it is never answered. ``SilentDropper`` is such a path on 127.0.0.1: it
answers every request, except one that arrives on a connection idle for longer than
``drop_after`` seconds, which it reads and then ignores, the socket left open. The same
server hangs the request when connections are kept longer than that, and answers it at once
(on a new connection) when they expire sooner: the setting is what saves it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Callable

import pytest

from llm_service.errors import UpstreamTimeout
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.wire import StreamPool
from tests.support.raw_http import SSE_HEAD, Handler, Server, chunk, read_request, serve

LINGER_0 = struct.pack("ii", 1, 0)
WHOLE = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"whole"}}]}'


def answer(writer: asyncio.StreamWriter, request: bytes) -> None:
    """A streamed answer (two chunks and [DONE]), or a whole JSON one for a
    ``"stream":false`` request (aiohttp's path)."""
    if b'"stream":false' in request:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(WHOLE), WHOLE)
        )
        return
    writer.write(SSE_HEAD)
    for text in (b"a", b"b"):
        delta = b'{"choices":[{"index":0,"delta":{"content":"%s"}}]}' % text
        writer.write(chunk(b"data: " + delta + b"\n\n"))
    writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


class Dropper:
    """What a ``silent_dropper`` saw: requests dropped, connections the client closed."""

    def __init__(self) -> None:
        self.dropped = 0
        self.closed_by_client = 0
        self._closed = asyncio.Event()

    def client_closed(self) -> None:
        self.closed_by_client += 1
        self._closed.set()

    async def until_closed_by_client(self, count: int) -> None:
        """Wait (2 s at most) until the client closed ``count`` connections: the server
        reads the end a moment after the client closed."""
        async with asyncio.timeout(2.0):
            while self.closed_by_client < count:
                self._closed.clear()
                await self._closed.wait()


def silent_dropper(drop_after: float, seen: Dropper) -> Callable[[Server], Handler]:
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            last = time.monotonic()
            while True:
                try:
                    request = await read_request(reader)
                except asyncio.IncompleteReadError:
                    seen.client_closed()
                    return
                server.requests.append(request)
                if time.monotonic() - last > drop_after:
                    seen.dropped += 1  # the path forgot this connection: silence, no FIN
                    await reader.read()  # until the client gives up and closes
                    seen.client_closed()
                    return
                answer(writer, request)
                await writer.drain()
                last = time.monotonic()

        return handler

    return make


def idle_closer(after: float, *, reset: bool = False) -> Callable[[Server], Handler]:
    """Answers requests; closes a connection once it was idle ``after`` seconds, with a FIN
    or (``reset``) an RST."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    async with asyncio.timeout(after):
                        request = await read_request(reader)
                except TimeoutError:
                    if reset:  # no lingering: close() sends an RST
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
                    return  # Server closes the writer
                server.requests.append(request)
                answer(writer, request)
                await writer.drain()

        return handler

    return make


def one_answer_per_connection(server: Server) -> Handler:
    """Answers a connection's first request; reads the next and closes without a byte, as a
    server does that closed the idle connection while the request was on its way."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(request := await read_request(reader))
        answer(writer, request)
        await writer.drain()
        server.requests.append(await read_request(reader))

    return handler


def client_for(
    server: Server,
    *,
    keepalive: float,
    first_token_timeout: float | None = None,
    transport: str = "lean",
) -> UpstreamClient:
    return UpstreamClient(
        server.url.removesuffix("/v1/chat/completions"),
        transport="aiohttp" if transport == "aiohttp" else "lean",
        connect_timeout=2.0,
        total_timeout=10.0,
        first_token_timeout=first_token_timeout,
        keepalive=keepalive,
    )


async def streamed_text(client: UpstreamClient) -> str:
    parts = []
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async for batch in client.stream_chat(payload):
        for c in batch:
            parts.append(c["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


async def test_an_expired_connection_is_not_reused_so_a_silent_drop_costs_nothing(
    transport: str,
) -> None:
    seen = Dropper()
    async with serve(silent_dropper(0.3, seen)) as server:
        client = client_for(server, keepalive=0.1, first_token_timeout=5.0, transport=transport)
        await client.start()
        try:
            assert await streamed_text(client) == "ab"
            await asyncio.sleep(0.5)  # idle past what the path keeps
            began = time.monotonic()
            assert await streamed_text(client) == "ab"
            took = time.monotonic() - began
        finally:
            await client.aclose()
    assert took < 1.0  # answered at once, not after a timeout
    assert seen.dropped == 0
    assert server.connections == 2  # the expired one was closed, a new one made


async def test_a_connection_kept_past_the_silent_drop_hangs_until_the_first_token_timeout(
    transport: str,
) -> None:
    seen = Dropper()
    async with serve(silent_dropper(0.3, seen)) as server:
        client = client_for(server, keepalive=5.0, first_token_timeout=0.8, transport=transport)
        await client.start()
        try:
            assert await streamed_text(client) == "ab"
            await asyncio.sleep(0.5)
            began = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="LLM_FIRST_TOKEN_TIMEOUT"):
                await streamed_text(client)
            took = time.monotonic() - began
            # Given up: the connection is closed, not kept.
            await seen.until_closed_by_client(1)
        finally:
            await client.aclose()
    assert took >= 0.75  # the whole first-token timeout, spent for nothing
    assert seen.dropped == 1 and server.connections == 1


async def test_whole_answers_over_aiohttp_expire_alike() -> None:
    seen = Dropper()
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with serve(silent_dropper(0.3, seen)) as server:
        client = client_for(server, keepalive=0.1)
        await client.start()
        try:
            await client.chat(payload)
            await asyncio.sleep(0.5)
            async with asyncio.timeout(2.0):
                reply = await client.chat(payload)
        finally:
            await client.aclose()
    assert reply["choices"][0]["message"]["content"] == "whole"
    assert seen.dropped == 0 and server.connections == 2


async def test_within_the_keepalive_the_connection_is_reused(transport: str) -> None:
    seen = Dropper()
    async with serve(silent_dropper(5.0, seen)) as server:
        client = client_for(server, keepalive=4.0, transport=transport)
        await client.start()
        try:
            for _ in range(3):
                assert await streamed_text(client) == "ab"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
    assert len(server.requests) == 3 and server.connections == 1


async def test_keepalive_zero_never_reuses(transport: str) -> None:
    seen = Dropper()
    async with serve(silent_dropper(5.0, seen)) as server:
        client = client_for(server, keepalive=0, transport=transport)
        await client.start()
        try:
            for _ in range(3):
                assert await streamed_text(client) == "ab"
            await seen.until_closed_by_client(3)  # each closed after its answer
        finally:
            await client.aclose()
    assert server.connections == 3


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_a_connection_the_server_closed_while_idle_is_not_used(reset: bool) -> None:
    # The lean pool's own bookkeeping (aiohttp's connector is tested by aiohttp).
    async with serve(idle_closer(0.1, reset=reset)) as server:
        client = client_for(server, keepalive=4.0)
        await client.start()
        try:
            assert await streamed_text(client) == "ab"
            await asyncio.sleep(0.3)  # the server closed it meanwhile
            # Noticed while idle (connection_lost), before any request is sent on it.
            assert client._shared is not None
            pool = client._shared.streams
            assert isinstance(pool, StreamPool)
            idle = [c for conns in pool._idle.values() for c in conns]
            assert len(idle) == 1 and idle[0].closed
            assert await streamed_text(client) == "ab"
        finally:
            await client.aclose()
    assert len(server.requests) == 2  # none lost on the closed connection
    assert server.connections == 2


async def test_a_stale_connection_failing_before_any_byte_is_retried_once(
    transport: str,
) -> None:
    async with serve(one_answer_per_connection) as server:
        client = client_for(server, keepalive=4.0, transport=transport)
        await client.start()
        try:
            assert await streamed_text(client) == "ab"
            assert await streamed_text(client) == "ab"  # sent twice: stale, then new
        finally:
            await client.aclose()
    assert len(server.requests) == 3 and server.connections == 2


async def test_the_sweep_closes_idle_connections_nobody_reuses() -> None:
    seen = Dropper()
    async with serve(silent_dropper(5.0, seen)) as server:
        client = client_for(server, keepalive=0.1)
        await client.start()
        try:
            # Three streams at once leave three idle connections behind.
            texts = await asyncio.gather(*(streamed_text(client) for _ in range(3)))
            assert texts == ["ab"] * 3 and server.connections == 3
            # No request comes: the sweep closes them (the client's close is further off).
            await seen.until_closed_by_client(3)
        finally:
            await client.aclose()


async def test_pool_expiry_at_pick_time() -> None:
    seen = Dropper()
    async with serve(silent_dropper(5.0, seen)) as server:
        pool = StreamPool(
            ssl_context=ssl.create_default_context(), connect_timeout=2.0, keepalive=0.4
        )
        try:
            for pause in (0.0, 0.05, 0.7, 0.05):
                await asyncio.sleep(pause)
                conn = await pool.open(server.url, b"{}", {}, total=5.0)
                assert await conn.read_all()
                pool.release(conn)
        finally:
            pool.close()
    # Reused after 0.05 s twice; after 0.7 s the connection had expired (and was swept).
    assert server.connections == 2 and len(server.requests) == 4
