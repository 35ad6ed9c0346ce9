"""Push mode: tokens written to the client from the model server connection's callback.

Three layers, each against real sockets: ``StreamConnection.pump`` (the transport hands the
body to a callback instead of waking a reader), ``UpstreamStream.push`` (parsed batches
to a sink), and ``http.push`` (uvicorn's chunked response written from outside the request's
task). The route's bytes in push and pull mode are compared in
``test_chat_fake.test_route_via_chain_gives_the_same_sse``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from llm_service.http.push import DirectWriter, WriteBatch, direct_writer
from llm_service.upstream import build_client
from llm_service.upstream.sse import Chunk
from llm_service.upstream.wire import ReadTimeout
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.raw_http import (
    SSE_HEAD,
    chunk,
    flood,
    keep_alive_sse,
    pool,
    reply_once,
    serve,
)
from tests.support.servers import FakeServer, ServiceServer, free_port, settings_for
from tests.support.sse import content_of, parse_frames


def collect(into: list[T], *, stop: bool = False) -> Callable[[T], bool]:
    """A sink that keeps what it is given and answers ``stop``."""

    def sink(item: T) -> bool:
        into.append(item)
        return stop

    return sink


T = TypeVar("T")


# --- the transport: StreamConnection.pump -------------------------------------------------


async def test_pump_hands_the_body_to_the_sink_and_keeps_the_connection() -> None:
    async with serve(keep_alive_sse) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        got: list[bytes] = []
        await conn.pump(collect(got))
        events = [b'data: {"n":%d}\n\n' % i for i in range(3)] + [b"data: [DONE]\n\n"]
        assert b"".join(got) == b"".join(events)
        assert conn.complete and await conn.read() == b""
        assert conn.reusable
        p.release(conn)


async def test_a_sink_that_asks_to_stop_hands_back_to_read() -> None:
    piece = b"data: " + b"z" * 100 + b"\n\n"
    async with serve(flood(piece, 500)) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        got: list[bytes] = []
        await conn.pump(collect(got, stop=True))  # stop after the first read
        assert len(got) == 1
        rest = await conn.read_all()  # nothing lost between the modes
        assert b"".join(got) + rest == piece * 500
        p.release(conn)


async def test_what_the_sink_raises_is_raised_by_pump() -> None:
    async with serve(keep_alive_sse) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)

        def sink(data: bytes) -> bool:
            raise ValueError("bad frame")

        with pytest.raises(ValueError, match="bad frame"):
            await conn.pump(sink)
        p.release(conn)


async def test_pump_returns_on_silence_and_read_reports_it() -> None:
    one_then_silence = reply_once(SSE_HEAD + chunk(b'data: {"n":0}\n\n'), hold=True)

    async with serve(one_then_silence) as server, pool() as p:
        conn = await p.open(server.url, b"{}", {}, total=5.0)
        assert await conn.read() == b'data: {"n":0}\n\n'
        conn.idle_timeout(0.2)
        started = time.monotonic()
        await conn.pump(lambda data: False)
        assert time.monotonic() - started < 2.0
        with pytest.raises(ReadTimeout) as exc:
            await conn.read()
        assert exc.value.idle
        p.release(conn)


# --- the client: an upstream stream pushed to a sink ----------------------------------------


def test_open_stream_pushes_batches_after_the_first(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    """The first batch is pulled (retries and the first-token deadline apply to it); after
    ``push(sink)`` every further batch reaches the sink, and ``next`` then reports the end."""
    fake.push(Script(tokens=[f" t{i}" for i in range(20)], token_delay=0.005))
    settings = settings_for(fake_server.url)

    async def run() -> tuple[list[Chunk], list[list[Chunk]]]:
        client = build_client(settings, fake_server.url)
        await client.start()
        try:
            stream = await client.open_stream({"model": "fake-model", "messages": []})
            try:
                pushed: list[list[Chunk]] = []
                await stream.push(collect(pushed))
                assert await stream.next() == []
                return stream.first, pushed
            finally:
                stream.close()
        finally:
            await client.aclose()

    first, pushed = asyncio.run(run())
    chunks = first + [c for batch in pushed for c in batch]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(f" t{i}" for i in range(20))
    assert len(pushed) >= 10  # tokens 5 ms apart: pushed one read at a time, not all at once
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --- the client side: uvicorn's response written directly ---------------------------------


BIG = b"data: " + b"b" * 70_000 + b"\n\n"


def test_direct_writer_writes_uvicorns_chunked_body() -> None:
    """Under uvicorn (httptools) the route gets a writer for its response, and what it writes
    is a valid chunked body that ends with uvicorn's own last send."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        batch = WriteBatch()
        seen["before_start"] = direct_writer(send, batch)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        writer = direct_writer(send, batch)
        seen["writer"] = writer
        assert writer is not None and writer.ready
        assert writer(b"data: one\n\n") is False
        seen["waiting"] = bool(writer._pending)  # written at the end of this loop turn
        await asyncio.sleep(0)
        seen["flushed"] = not writer._pending
        assert writer(b"data: two\n\n") is False
        assert writer(BIG) is True  # more than 64 KB waiting: stop pushing, send waits
        writer.flush()  # what the route does before it sends anything itself
        await send({"type": "http.response.body", "body": b"data: end\n\n", "more_body": False})
        seen["after_end"] = direct_writer(send, batch)

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                            log_level="warning", lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        resp = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert resp.content == b"data: one\n\ndata: two\n\n" + BIG + b"data: end\n\n"
        assert resp.headers["transfer-encoding"] == "chunked"
    finally:
        server.should_exit = True
        thread.join(10)
    assert seen["waiting"] and seen["flushed"]
    assert seen["before_start"] is None  # no head yet: nothing to write into
    assert isinstance(seen["writer"], DirectWriter)
    assert seen["after_end"] is None


def test_direct_writer_is_none_for_other_servers() -> None:
    async def send(message: Any) -> None:
        pass

    assert direct_writer(send, WriteBatch()) is None


async def test_a_write_batch_flushes_each_writer_once_per_loop_turn() -> None:
    class Writer:
        def __init__(self) -> None:
            self.flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    batch = WriteBatch()
    writers = [Writer() for _ in range(5)]
    for writer in writers:
        batch.add(writer)
    assert all(w.flushes == 0 for w in writers)  # nothing before the turn ends
    await asyncio.sleep(0)
    assert [w.flushes for w in writers] == [1] * 5
    batch.add(writers[0])  # a later turn schedules its own flush
    await asyncio.sleep(0)
    assert [w.flushes for w in writers] == [2, 1, 1, 1, 1]


async def test_a_failing_writer_does_not_strand_the_others() -> None:
    flushed: list[str] = []

    class Writer:
        def __init__(self, name: str) -> None:
            self.name = name

        def flush(self) -> None:
            if self.name == "bad":
                raise OSError("gone")
            flushed.append(self.name)

    batch = WriteBatch()
    for name in ("a", "bad", "b"):
        batch.add(Writer(name))
    await asyncio.sleep(0)
    assert flushed == ["a", "b"]


@pytest.fixture(scope="module")
def roomy_service(fake_server: FakeServer) -> Any:
    server = ServiceServer(settings_for(fake_server.url, request_timeout=60.0))
    yield server
    server.close()


def test_a_slow_client_gets_every_frame_in_order(fake: FakeOpenAI, roomy_service: Any) -> None:
    """A client that stops reading fills its socket: the push stops, frames go through
    ``send`` (which waits for the client), the model server is read no faster than the
    client reads, and nothing is lost or reordered."""
    tokens = [f" {i:05d}" + "x" * 1000 for i in range(20_000)]  # ≈ 20 MB of frames
    fake.push(Script(tokens=tokens))
    service = roomy_service
    body = (
        b'{"messages":[{"role":"user","content":"slow reader"}],"stream":true,"max_tokens":30000}'
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connecting: the window
    sock.connect(("127.0.0.1", service.port))
    try:
        sock.sendall(request)
        time.sleep(1.5)  # we read nothing
        # The service stopped reading from the model server too: its answer is not all sent.
        assert "slow reader" not in fake.ended_at
        sock.settimeout(30)
        received = bytearray()
        while not received.endswith(b"0\r\n\r\n"):
            part = sock.recv(65536)
            assert part, "connection closed before the end"
            received += part
    finally:
        sock.close()
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    text = _dechunk(chunked).decode()
    frames = parse_frames(text)
    assert frames[-1].raw == "[DONE]"
    assert content_of(frames) == "".join(tokens)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]
