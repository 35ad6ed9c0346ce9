"""Requests leave nothing for the cyclic garbage collector.

A reference cycle per request (a cancelled task whose exception holds its frame, which holds
the task) is garbage only the collector can free: it piles up between collections, and each
collection then pauses every stream for longer (docs/performance.md). This runs
streamed and whole requests through the service with ``gc.DEBUG_SAVEALL`` and checks that no
task, coroutine or frame of the service or uvicorn ended up in a cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from types import CoroutineType, FrameType

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for

SERVER_CODE = ("/llm_service/", "/uvicorn/", "/starlette/", "/fastapi/")


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceServer]:
    fake = FakeServer(FakeOpenAI(default=Script(tokens=[f" t{i}" for i in range(8)])))
    server = ServiceServer(settings_for(fake.url))
    yield server
    server.close()
    fake.close()


def server_objects_in_cycles(garbage: list[object]) -> list[str]:
    found = []
    for obj in garbage:
        code = None
        if isinstance(obj, FrameType):
            code = obj.f_code
        elif isinstance(obj, CoroutineType):
            code = obj.cr_code
        elif type(obj).__name__ == "Task":
            coro = obj.get_coro()  # type: ignore[attr-defined]
            code = getattr(coro, "cr_code", None)
        if code is not None and any(part in code.co_filename for part in SERVER_CODE):
            found.append(f"{type(obj).__name__} {code.co_qualname}")
    return found


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_requests_make_no_reference_cycles(service: ServiceServer, stream: bool) -> None:
    url = f"{service.url}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}
    with httpx.Client(timeout=10) as client:
        for _ in range(20):  # warm-up: lazily built state is not per request
            client.post(url, json=body).read()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(100):
                assert client.post(url, json=body).status_code == 200
            gc.collect()
            found = server_objects_in_cycles(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert found == []
