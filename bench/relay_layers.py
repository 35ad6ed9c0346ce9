"""What the Python layers of one relayed chunk cost without sockets.

One chunk per "network read" (a future woken by the loop, as a paced upstream does), then
three ways to handle it, each timed over 200,000 chunks on uvloop::

    base     the wake-up alone
    flat     wake-up, split the SSE lines, orjson.loads, encode the content frame, inline
    layered  the same through the service's layers: a source of parsed batches (like
             ``upstream.stream.UpstreamStream``) relayed by ``serving.relay.UpstreamRelay``

    taskset -c 0 uv run --no-sync python -m bench.relay_layers

Prints µs of CPU per chunk for each. Read with docs/performance.md ("2026-12-01").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import uvloop

from llm_service.protocol.openai import OpenAIChunkEncoder
from llm_service.serving.relay import Answer, FrameList, UpstreamRelay
from llm_service.upstream.stream import BatchSink

CHUNK = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}\n\n'
)
N = 200_000


class Source:
    """One chunk per read, each after a loop wake-up."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def read(self) -> bytes:
        waiter = self.loop.create_future()
        self.loop.call_soon(waiter.set_result, None)
        await waiter
        return CHUNK


class Batches:
    """Parsed batches of ``Source``'s reads, pulled (the relay's ``BatchSource``)."""

    def __init__(self) -> None:
        self.source = Source()
        self.left = N
        self.first: list[dict[str, Any]] = []

    async def next(self) -> list[dict[str, Any]]:
        if not self.left:
            return []
        self.left -= 1
        data = await self.source.read()
        return [
            orjson.loads(line[5:].strip()) for line in data.split(b"\n") if line[:5] == b"data:"
        ]

    async def push(self, sink: BatchSink) -> None:
        return None

    def close(self) -> None:
        return None


async def opened() -> Batches:
    batches = Batches()
    batches.first = await batches.next()
    return batches


async def base() -> None:
    source = Source()
    for _ in range(N):
        await source.read()


async def flat() -> None:
    source, content = Source(), OpenAIChunkEncoder("m").content
    for _ in range(N):
        for line in (await source.read()).split(b"\n"):
            if line[:5] == b"data:":
                text = orjson.loads(line[5:].strip())["choices"][0]["delta"].get("content")
                if text:
                    content(text)


async def layered() -> None:
    relay = UpstreamRelay(opened, OpenAIChunkEncoder("m"), Answer(), lambda _: None)
    await relay.start()
    await relay.run(FrameList())


def main() -> None:
    runs: list[Callable[[], Coroutine[Any, Any, None]]] = [base, flat, layered]
    for run in runs * 2:
        start = time.process_time()
        uvloop.run(run())
        print(f"{run.__name__:8} {(time.process_time() - start) / N * 1e6:5.2f} µs per chunk")


if __name__ == "__main__":
    main()
