"""Client disconnects cancel the upstream request at once, 1000 times over, leaving nothing.

A dedicated fake model server and service (the default 300 s request timeout, so only the
disconnect can end a stream): streams of 10 s of paced tokens are opened in concurrent
batches, each is dropped after its first token, and the fake records when it saw each
upstream stream end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for

STREAMS = 1000
BATCH = 100


@pytest.fixture(scope="module")
def pair(transport: str) -> Iterator[tuple[FakeServer, ServiceServer]]:
    fake = FakeServer(
        FakeOpenAI(default=Script(tokens=[f" t{i}" for i in range(200)], token_delay=0.05))
    )
    service = ServiceServer(settings_for(fake.url, upstream_transport=transport))
    yield fake, service
    service.close()
    fake.close()


def established(port: int) -> int:
    """TCP connections in this process's network namespace with local port ``port``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
            count += 1
    return count


async def open_and_drop(session: aiohttp.ClientSession, url: str, tag: str) -> float:
    """One stream: read until the first token, then drop the connection; when it was dropped."""
    body = {"messages": [{"role": "user", "content": tag}], "max_tokens": 200, "stream": True}
    resp = await session.post(url, json=body)
    assert resp.status == 200
    while b"chat.completion.chunk" not in await resp.content.readany():
        pass
    dropped = time.monotonic()
    resp.close()  # closes the connection: the client is gone
    return dropped


async def run_batches(url: str) -> dict[str, float]:
    dropped: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=BATCH)
    async with aiohttp.ClientSession(connector=connector) as session:
        for start in range(0, STREAMS, BATCH):
            tags = [f"client-{i}" for i in range(start, start + BATCH)]
            times = await asyncio.gather(*(open_and_drop(session, url, t) for t in tags))
            dropped.update(zip(tags, times, strict=True))
    return dropped


def service_tasks(service: ServiceServer) -> int:
    loop = service.server.servers[0].get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(5)


def test_1000_disconnects_close_every_upstream_stream_within_1s(
    pair: tuple[FakeServer, ServiceServer],
) -> None:
    fake_server, service = pair
    fake = fake_server.fake
    tasks_before = service_tasks(service)
    # The start-up check's kept-alive connection (aiohttp's pool, not the streams') may be open.
    conns_before = established(fake_server.port)
    dropped = asyncio.run(run_batches(f"{service.url}/v1/chat/completions"))

    deadline = time.monotonic() + 2.0
    while fake.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.open_streams == 0
    assert fake.streams_started == STREAMS
    assert fake.streams_cut == STREAMS and fake.streams_finished == 0
    lags = {tag: fake.ended_at[tag] - at for tag, at in dropped.items()}
    late = {tag: round(lag, 3) for tag, lag in lags.items() if lag > 1.0}
    assert late == {}  # every upstream stream ended within 1 s of its client going away

    # Nothing is left behind in the service: no request in flight, no extra task, no
    # connection to the model server or from a client.
    gate = service.app.state.service.gate
    deadline = time.monotonic() + 2.0
    while (gate.active or service_tasks(service) > tasks_before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gate.active == 0
    assert service_tasks(service) <= tasks_before
    assert established(fake_server.port) <= conns_before <= 1
    assert established(service.port) == 0


def test_a_client_giving_up_on_a_whole_answer_frees_the_request(
    pair: tuple[FakeServer, ServiceServer],
) -> None:
    """Not streamed: the client's timeout ends the service's wait for the model at once."""
    fake_server, service = pair
    fake_server.fake.push(Script(first_token_delay=3.0))
    body = {"messages": [{"role": "user", "content": "whole"}], "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=0.3)
    gate = service.app.state.service.gate
    deadline = time.monotonic() + 1.0  # well before the model's answer at 3 s
    while gate.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.active == 0
