"""The four timeouts towards the model server, each against a real (fake) server on cue:
connect (LLM_CONNECT_TIMEOUT), time to first token (LLM_FIRST_TOKEN_TIMEOUT), idle gap between
chunks (LLM_IDLE_TIMEOUT) and the whole request (LLM_REQUEST_TIMEOUT). Before the first token
each is a 504; after it, an SSE error event and a clean end."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames

TOKENS = [f" t{i}" for i in range(8)]


@pytest.fixture(scope="module")
def timed_fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def timed_service(timed_fake: FakeServer, transport: str) -> Iterator[ServiceServer]:
    server = ServiceServer(
        settings_for(
            timed_fake.url,
            connect_timeout=0.5,
            first_token_timeout=1.0,
            idle_timeout=0.5,
            request_timeout=2.5,
            startup_wait=0,
            upstream_transport=transport,
        )
    )
    yield server
    server.close()


@pytest.fixture
def tfake(timed_fake: FakeServer) -> FakeOpenAI:
    timed_fake.fake.reset()
    return timed_fake.fake


def ask(service: ServiceServer, stream: bool = True) -> httpx.Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def error_event(text: str) -> dict[str, Any]:
    frames = parse_frames(text)
    assert frames[-1].raw == "[DONE]"
    errors = [f for f in frames if f.event == "error"]
    assert len(errors) == 1
    return errors[0].json()["error"]  # type: ignore[no-any-return]


def test_connect_timeout_is_504(transport: str) -> None:
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    # connect hangs until the client gives up.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    service = ServiceServer(
        settings_for(
            f"http://127.0.0.1:{port}",
            connect_timeout=0.5,
            startup_wait=0,
            upstream_transport=transport,
        )
    )
    try:
        started = time.monotonic()
        resp = ask(service)
        assert time.monotonic() - started < 5  # the 0.5 s deadline, not the 300 s total
        assert resp.status_code == 504
        err = resp.json()["error"]
        assert err["type"] == "upstream_timeout"
        assert "LLM_CONNECT_TIMEOUT" in err["message"]
    finally:
        service.close()
        for sock in [*fillers, listener]:
            sock.close()


def test_first_token_timeout_is_504(timed_service: ServiceServer, tfake: FakeOpenAI) -> None:
    tfake.push(Script(first_token_delay=2.0))
    started = time.monotonic()
    resp = ask(timed_service)
    assert time.monotonic() - started < 1.9  # ended by the 1 s deadline, not the answer
    assert resp.status_code == 504
    assert "LLM_FIRST_TOKEN_TIMEOUT" in resp.json()["error"]["message"]
    assert tfake.streams_started == 0 and len(tfake.requests) == 1


def test_slow_first_token_within_deadline_is_not_an_idle_timeout(
    timed_service: ServiceServer, tfake: FakeOpenAI
) -> None:
    # 0.8 s of silence before the first token is more than LLM_IDLE_TIMEOUT (0.5 s) but
    # within LLM_FIRST_TOKEN_TIMEOUT (1 s): the idle timer only runs once tokens flow.
    tfake.push(Script(tokens=TOKENS, first_token_delay=0.8))
    resp = ask(timed_service)
    assert resp.status_code == 200
    assert content_of(parse_frames(resp.text)) == "".join(TOKENS)


def test_idle_gap_mid_stream_is_an_sse_error(
    timed_service: ServiceServer, tfake: FakeOpenAI
) -> None:
    tfake.push(Script(tokens=TOKENS, stall_after=3, stall_for=1.5))
    resp = ask(timed_service)
    assert resp.status_code == 200
    assert content_of(parse_frames(resp.text)) == "".join(TOKENS[:3])
    err = error_event(resp.text)
    assert err["code"] == 504 and "LLM_IDLE_TIMEOUT" in err["message"]


def test_total_timeout_mid_stream_is_an_sse_error(
    timed_service: ServiceServer, tfake: FakeOpenAI
) -> None:
    # Every gap (0.3 s) is within the idle limit; the whole answer (~6 s) is not.
    tfake.push(Script(tokens=[f" w{i}" for i in range(20)], token_delay=0.3))
    resp = ask(timed_service)
    assert resp.status_code == 200
    assert content_of(parse_frames(resp.text))  # some tokens came first
    err = error_event(resp.text)
    assert err["code"] == 504 and "LLM_REQUEST_TIMEOUT" in err["message"]


def test_total_timeout_of_a_whole_answer_is_504(
    timed_service: ServiceServer, tfake: FakeOpenAI
) -> None:
    tfake.push(Script(first_token_delay=4.0))
    resp = ask(timed_service, stream=False)
    assert resp.status_code == 504
    assert "LLM_REQUEST_TIMEOUT" in resp.json()["error"]["message"]


def test_no_timeout_on_a_normal_answer(timed_service: ServiceServer, tfake: FakeOpenAI) -> None:
    tfake.push(Script(tokens=TOKENS, token_delay=0.1))
    resp = ask(timed_service)
    assert resp.status_code == 200
    assert parse_frames(resp.text)[-2].json()["choices"][0]["finish_reason"] == "stop"
