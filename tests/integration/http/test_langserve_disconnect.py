"""A client that leaves ``/llm/invoke`` or ``/llm/batch`` cuts the model server's request at
once and gives its place under ``LLM_MAX_CONCURRENT`` back, as on every other route."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import FakeServer, ServiceServer, settings_for

HOLD = 5.0  # seconds a slow whole answer takes: only a disconnect ends it sooner


class SlowWholeAnswers(FakeOpenAI):
    """Whole (not streamed) answers to a last message starting with ``slow`` take ``HOLD``
    seconds; the fake notices when the service closes the connection first, and records
    when each such request ended (``ended_at``) and which were cut (``cut``)."""

    def __init__(self) -> None:
        super().__init__()
        self.cut: set[str] = set()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        tag = str(body["messages"][-1].get("content"))
        if body.get("stream") or not tag.startswith("slow"):
            return await super().chat(request)
        self.requests.append(body)
        transport = request.transport
        deadline = time.monotonic() + HOLD
        try:
            # aiohttp has no close event to await: poll, as the fake's hang_after does.
            while transport is not None and not transport.is_closing():
                if time.monotonic() > deadline:
                    message = {"role": "assistant", "content": "late"}
                    choice = {"index": 0, "finish_reason": "stop", "message": message}
                    return web.json_response({"id": "x", "object": "chat.completion",
                                              "created": 0, "model": self.model,
                                              "choices": [choice]})  # fmt: skip
                await asyncio.sleep(0.01)
            self.cut.add(tag)
            return web.Response()
        finally:
            self.ended_at[tag] = time.monotonic()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[SlowWholeAnswers, ServiceServer]]:
    fake = SlowWholeAnswers()
    upstream = FakeServer(fake)
    service = ServiceServer(settings_for(upstream.url, max_concurrent=1))
    yield fake, service
    service.close()
    upstream.close()


def send_and_leave(service: ServiceServer, fake: SlowWholeAnswers, path: str, body: Any) -> float:
    """POST ``body`` on a raw socket, wait until the model server has the request (and at
    least 0.3 s), close the socket; when it was closed."""
    data = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    seen = len(fake.requests)
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(head + data)
    sent = time.monotonic()
    while len(fake.requests) == seen and time.monotonic() < sent + 3:
        time.sleep(0.01)
    assert len(fake.requests) > seen, "the request never reached the model server"
    time.sleep(max(0.0, sent + 0.3 - time.monotonic()))
    sock.close()
    return time.monotonic()


def wait_ended(fake: SlowWholeAnswers, tags: list[str], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not all(t in fake.ended_at for t in tags) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("path", "body", "tags"),
    [
        ("/llm/invoke", {"input": {"messages": [{"role": "user", "content": "slow-i"}]}},
         ["slow-i"]),
        ("/llm/batch", {"inputs": [{"messages": [{"role": "user", "content": "slow-b1"}]},
                                   {"messages": [{"role": "user", "content": "slow-b2"}]}]},
         ["slow-b1", "slow-b2"]),
    ],
    ids=["invoke", "batch"],
)  # fmt: skip
def test_leaving_cuts_the_model_request_and_frees_the_place(
    pair: tuple[SlowWholeAnswers, ServiceServer], path: str, body: Any, tags: list[str]
) -> None:
    fake, service = pair
    fake.reset()
    fake.cut.clear()
    closed = send_and_leave(service, fake, path, body)
    wait_ended(fake, tags, HOLD)
    lags = {t: round(fake.ended_at[t] - closed, 3) for t in tags if t in fake.ended_at}
    assert fake.cut == set(tags), lags  # cut, not answered after HOLD seconds
    assert all(lag < 1.0 for lag in lags.values()), lags
    # The call's one place under LLM_MAX_CONCURRENT=1 is free at once: the next call is
    # served, not refused with 429.
    again = {"input": {"messages": [{"role": "user", "content": "fast"}]}}
    resp = httpx.post(f"{service.url}/llm/invoke", json=again, timeout=10)
    assert resp.status_code == 200, resp.text
    assert service.app.state.service.gate.active == 0
