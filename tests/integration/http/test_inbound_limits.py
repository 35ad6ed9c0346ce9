"""Hostile clients at the HTTP layer: heads without end, too many headers, slow heads and
slow bodies. Each is refused in bounded time and memory, on every route, and never holds a
place under the concurrency cap (raw sockets against the service under uvicorn)."""

from __future__ import annotations

import gc
import resource
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import FakeServer, ServiceServer, settings_for

CHAT = b"/v1/chat/completions"
BODY = orjson.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": False})


@pytest.fixture(scope="module")
def guarded(fake_server: FakeServer) -> Iterator[ServiceServer]:
    server = ServiceServer(
        settings_for(
            fake_server.url,
            max_concurrent=1,
            max_header_bytes=16 * 1024,
            max_headers=50,
            max_request_line=2048,
            header_timeout=1.0,
            body_timeout=1.0,
        )
    )
    yield server
    server.close()


def connect(server: ServiceServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def head(path: bytes = CHAT, length: int = len(BODY), extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % length + extra + b"\r\n"
    )


def answer(sock: socket.socket) -> bytes:
    """Everything the service sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def send_until_closed(sock: socket.socket, piece: bytes, most: int) -> int:
    """Send ``piece`` again and again (at most ``most`` bytes); the bytes sent before the
    service closed the connection."""
    sent = 0
    try:
        while sent < most:
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_a_head_without_end_is_refused_with_431_in_bounded_memory(
    guarded: ServiceServer,
) -> None:
    """20 connections each sending a 25 MB header line that never ends: each is refused once
    past LLM_MAX_HEADER_BYTES, and the process does not keep what they sent."""
    gc.collect()
    before = rss_mb()
    started = time.monotonic()
    results: list[tuple[int, bytes]] = []

    def flood() -> None:
        with connect(guarded) as sock:
            sock.sendall(b"GET /v1/health_check HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = send_until_closed(sock, b"a" * 65536, 25 * 2**20)
            try:
                raw = answer(sock)
            except ConnectionResetError:
                raw = b""
            results.append((sent, raw))

    threads = [threading.Thread(target=flood) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    took = time.monotonic() - started
    gc.collect()
    grown = rss_mb() - before
    assert len(results) == 20
    for sent, raw in results:
        assert sent < 25 * 2**20  # cut off long before the end
        if raw:  # the refusal can be lost in the reset of a socket still sending
            assert status_of(raw) == 431 and b"LLM_MAX_HEADER_BYTES" in raw
    assert any(raw for _, raw in results)
    assert took < 10
    assert grown < 50, f"RSS grew by {grown:.0f} MB"
    assert httpx.get(f"{guarded.url}/v1/health_check", timeout=5).status_code == 200


def test_too_many_headers_is_431(guarded: ServiceServer) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(51))
    with connect(guarded) as sock:
        sock.sendall(head(extra=many) + BODY)
        raw = answer(sock)
    assert status_of(raw) == 431 and b"LLM_MAX_HEADERS" in raw


def test_a_long_request_target_is_414(guarded: ServiceServer) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /v1/health_check?q=" + b"a" * 4096 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = answer(sock)
    assert status_of(raw) == 414 and b"LLM_MAX_REQUEST_LINE" in raw


def test_headers_within_the_limits_pass(guarded: ServiceServer, fake: FakeOpenAI) -> None:
    fine = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(40))
    with connect(guarded) as sock:
        sock.sendall(head(extra=fine + b"Connection: close\r\n") + BODY)
        raw = answer(sock)
    assert status_of(raw) == 200


def test_a_slow_head_gets_408_after_the_header_timeout(guarded: ServiceServer) -> None:
    with connect(guarded) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(30):  # a byte every 0.1 s, never the end of the head
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        raw = answer(sock)
        took = time.monotonic() - started
    assert status_of(raw) == 408 and b"LLM_HEADER_TIMEOUT" in raw
    assert 0.9 < took < 2.5


def test_a_silent_connection_is_closed_after_the_header_timeout(guarded: ServiceServer) -> None:
    with connect(guarded) as sock:
        started = time.monotonic()
        raw = answer(sock)
        took = time.monotonic() - started
    assert raw == b"" and 0.9 < took < 2.5


def test_a_kept_alive_connection_is_not_cut_between_requests(
    guarded: ServiceServer, fake: FakeOpenAI
) -> None:
    """The head timeout runs from a request's first byte, not while a connection idles
    between requests (uvicorn's keep-alive timeout decides that)."""
    with httpx.Client(timeout=10) as client:
        first = client.post(f"{guarded.url}/v1/chat/completions", content=BODY)
        time.sleep(1.5)
        second = client.post(f"{guarded.url}/v1/chat/completions", content=BODY)
    assert first.status_code == second.status_code == 200


@pytest.mark.parametrize("path", [CHAT, b"/llm/invoke"])
def test_a_slow_body_gets_408_and_holds_no_place_under_the_cap(
    guarded: ServiceServer, fake: FakeOpenAI, path: bytes
) -> None:
    """LLM_MAX_CONCURRENT=1: a client that sends its head and part of its body, then waits,
    does not keep others out, and is cut after LLM_BODY_TIMEOUT."""
    with connect(guarded) as sock:
        started = time.monotonic()
        sock.sendall(head(path, length=1000) + b'{"messages": [')
        time.sleep(0.2)
        other = httpx.post(f"{guarded.url}/v1/chat/completions", content=BODY, timeout=5)
        assert other.status_code == 200, other.text
        raw = answer(sock)
        took = time.monotonic() - started
    assert status_of(raw) == 408 and b"LLM_BODY_TIMEOUT" in raw
    assert 0.9 < took < 2.5
    deadline = time.monotonic() + 2
    while guarded.app.state.service.gate.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert guarded.app.state.service.gate.active == 0


def test_an_unfinished_head_in_one_read_gets_408(guarded: ServiceServer) -> None:
    """The head's first and only read counts as a started request, not a silent one."""
    with connect(guarded) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Never: ends")
        raw = answer(sock)
        took = time.monotonic() - started
    assert status_of(raw) == 408 and 0.9 < took < 2.5
