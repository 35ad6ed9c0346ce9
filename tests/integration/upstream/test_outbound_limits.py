"""Everything read from a model server is bounded: whole replies, error bodies, response
heads and stream lines end as a defined 502 (or an SSE error event once the answer has
started) within seconds, in bounded memory that is given back; redirects are not followed.

The model server is ``hostile.HostileServer`` (raw sockets); the service runs in this
process, so this process's RSS is the service's memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.hostile_upstream import (
    MIB,
    HostileServer,
    Rss,
    endless,
    normal_answer,
    raw,
)
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames
from tests.support.token_server import TokenServer

RESPONSE_CAP = 1 * MIB
LINE_CAP = 64 * 1024
HEAD_CAP = 64 * 1024  # wire.MAX_HEAD_BYTES
# The service's own deadlines are far away: a request that ends within QUICK seconds was
# ended by a limit, not by a timeout.
LIMITS: dict[str, Any] = {
    "startup_wait": 0,
    "first_token_timeout": 20.0,
    "request_timeout": 30.0,
    "max_upstream_response_bytes": RESPONSE_CAP,
    "max_upstream_line_bytes": LINE_CAP,
}
QUICK = 5.0
# Memory: the cap twice (a reply being joined) plus room for the pools and parsers.
PEAK_ROOM = 2 * RESPONSE_CAP + 50 * MIB
AFTER_ROOM = 16 * MIB

BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20}
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer(default=normal_answer())
    yield server
    server.close()


@pytest.fixture(scope="module")
def service(hostile: HostileServer, transport: str) -> Iterator[ServiceServer]:
    server = ServiceServer(settings_for(hostile.url, upstream_transport=transport, **LIMITS))
    # Warm up both paths (first-use imports and pools are not the hostile reply's memory).
    for stream in (True, False):
        assert post(server, stream).status_code == 200
    yield server
    server.close()


@pytest.fixture
def server(hostile: HostileServer) -> HostileServer:
    hostile.answers.clear()
    hostile.requests.clear()
    hostile.models = None
    return hostile


def post(service: ServiceServer, stream: bool) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=60
    )


def timed(call: Any, *args: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = call(*args)
    return resp, time.monotonic() - start


def error_of(resp: httpx.Response) -> dict[str, Any]:
    error = resp.json()["error"]
    assert error["code"] == resp.status_code
    return error  # type: ignore[no-any-return]


def assert_bounded(rss: Rss) -> None:
    assert rss.growth < PEAK_ROOM, str(rss)
    assert rss.settle() - rss.before < AFTER_ROOM, str(rss)


# --- whole replies and error bodies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "stream"), [(200, False), (500, False), (500, True)], ids=["200", "500", "500-sse"]
)
def test_an_endless_reply_is_502_in_bounded_memory_and_time(
    service: ServiceServer, server: HostileServer, status: int, stream: bool
) -> None:
    server.push(endless(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n\r\n" % status))
    with Rss() as rss:
        resp, took = timed(post, service, stream)
    assert resp.status_code == 502, resp.text[:300]
    message = error_of(resp)["message"]
    if status == 200:
        assert message == (
            f"model server reply exceeds {RESPONSE_CAP} bytes (LLM_MAX_UPSTREAM_RESPONSE_BYTES)"
        )
    else:
        assert message.startswith("model server answered 500: ")
        assert len(resp.content) < 2000
    assert took < QUICK
    assert server.sent.bytes < 32 * MIB  # the service stopped reading and closed
    assert_bounded(rss)


def test_an_endless_models_reply_fails_readiness_in_bounded_memory(
    service: ServiceServer, server: HostileServer
) -> None:
    server.models = endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    with Rss() as rss:
        resp, took = timed(httpx.get, f"{service.url}/v1/ready")
    assert resp.status_code == 503
    assert "exceeds 1048576 bytes" in resp.json()["error"]["message"]
    assert took < QUICK
    assert_bounded(rss)


def test_a_declared_length_past_the_cap_is_refused_unread(
    service: ServiceServer, server: HostileServer
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    server.push(raw(head % (RESPONSE_CAP + 1) + b"{", hold=True))
    resp, took = timed(post, service, False)
    assert resp.status_code == 502 and "exceeds" in error_of(resp)["message"]
    assert took < QUICK


# --- response heads ----------------------------------------------------------------------------


HEADS = {
    "many-headers": (b"HTTP/1.1 200 OK\r\n", b"X-Filler: 0123456789abcdef\r\n" * 64),
    "one-endless-header": (b"HTTP/1.1 200 OK\r\nX-Filler: ", b"y" * 4096),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("kind", list(HEADS))
def test_an_endless_response_head_is_502_in_bounded_time(
    service: ServiceServer, server: HostileServer, kind: str, stream: bool
) -> None:
    start, piece = HEADS[kind]
    server.push(endless(start, piece, limit=64 * MIB))
    with Rss() as rss:
        resp, took = timed(post, service, stream)
    assert resp.status_code == 502, resp.text[:300]
    assert error_of(resp)["message"] == "model server sent bad HTTP"
    assert took < QUICK
    # Cut long before the 64 MiB it would send; what it wrote meanwhile sits in loopback's
    # socket buffers, which the kernel grows to several MiB under a fast writer.
    assert server.sent.bytes < 16 * MIB
    assert_bounded(rss)


# --- lines of a stream ---------------------------------------------------------------------------


def test_an_endless_line_before_the_first_token_is_502(
    service: ServiceServer, server: HostileServer
) -> None:
    server.push(endless(SSE_HEAD + b"data: {", b"z" * 4096))
    with Rss() as rss:
        resp, took = timed(post, service, True)
    assert resp.status_code == 502, resp.text[:300]
    assert error_of(resp)["message"] == (
        f"model server sent a line longer than {LINE_CAP} bytes (LLM_MAX_UPSTREAM_LINE_BYTES)"
    )
    assert took < QUICK
    assert server.sent.bytes < 16 * MIB  # as above: cut, less what loopback buffered
    assert_bounded(rss)


def test_an_endless_line_after_the_first_token_is_an_error_event_then_done(
    service: ServiceServer, server: HostileServer
) -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    server.push(endless(SSE_HEAD + first + b"data: {", b"z" * 4096))
    with Rss() as rss:
        resp, took = timed(post, service, True)
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert content_of(frames) == "Hi"
    assert frames[-1].raw == "[DONE]" and frames[-2].event == "error"
    error = frames[-2].json()["error"]
    assert error["code"] == 502 and "a line longer than 65536 bytes" in error["message"]
    assert took < QUICK
    assert_bounded(rss)


# --- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_is_502_and_not_followed(
    service: ServiceServer, server: HostileServer, status: int, stream: bool
) -> None:
    elsewhere = HostileServer(default=normal_answer())
    try:
        target = f"{elsewhere.url}/v1/chat/completions"
        head = b"HTTP/1.1 %d X\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
        server.push(raw(head % (status, target.encode())))
        resp = post(service, stream)
        assert resp.status_code == 502
        assert error_of(resp)["message"] == (
            f"model server answered {status} (redirects are not followed)"
        )
        assert elsewhere.requests == []  # the prompt went nowhere else
    finally:
        elsewhere.close()


def test_the_token_endpoint_redirect_is_not_followed(server: HostileServer, transport: str) -> None:
    """The client secret is posted to the configured token URL and nowhere else."""
    issuer = TokenServer(client_secret="oauth-secret-1234")
    elsewhere = FakeServer(app=issuer.app())
    redirect = b"HTTP/1.1 307 X\r\nLocation: %s/oauth/token\r\nContent-Length: 0\r\n\r\n"
    token_host = HostileServer(default=raw(redirect % elsewhere.url.encode()))
    service = ServiceServer(settings_for(
        server.url, vllm_token_url=f"{token_host.url}/oauth/token", vllm_client_id="svc",
        vllm_client_secret="oauth-secret-1234", upstream_transport=transport, **LIMITS,
    ))  # fmt: skip
    try:
        resp = post(service, True)
        assert resp.status_code == 503
        assert "answered 307" in error_of(resp)["message"]
        assert issuer.issued == [] and issuer.rejected == 0
    finally:
        service.close()
        token_host.close()
        elsewhere.close()


# --- malformed HTTP ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_bytes_that_are_not_http_are_502_without_parser_text(
    service: ServiceServer, server: HostileServer, stream: bool
) -> None:
    server.push(raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", hold=True))
    resp, took = timed(post, service, stream)
    assert resp.status_code == 502
    assert error_of(resp) == {
        "message": "model server sent bad HTTP", "type": "upstream_error", "param": None,
        "code": 502,
    }  # fmt: skip
    assert took < QUICK
