"""Each request's own id in what is logged while its answer streams, also when it reuses the
kept-alive model server connection that another request opened.

The network callbacks of a kept-alive connection run in the context of the request that
opened it; the push path (parse, encode, write from that callback) must still log with the
id of the request it serves. The transport-level check is in
``tests/integration/upstream/test_wire.py``; here the whole service (uvicorn, push relay)
serves two requests over one upstream connection, the second failing mid-stream.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import httpx
import pytest

from llm_service.observability.logs import handler_for
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import parse_frames

TOKENS = [f" t{i}" for i in range(6)]


@pytest.fixture(scope="module")
def context_fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def context_service(context_fake: FakeServer) -> Iterator[ServiceServer]:
    server = ServiceServer(settings_for(context_fake.url, startup_wait=0))
    yield server
    server.close()


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """The service's log lines in the text format (with the request id of each)."""
    out = io.StringIO()
    handler = handler_for(settings_for(None, log_format="text"), out)
    logger = logging.getLogger("llm_service")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)


def ask(service: ServiceServer, rid: str) -> str:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{service.url}/v1/chat/completions", json=body,
        headers={"X-Request-ID": rid}, timeout=30,
    ) as resp:  # fmt: skip
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == rid
        return resp.read().decode()


def test_a_reused_upstream_connection_logs_with_the_current_requests_id(
    context_service: ServiceServer, context_fake: FakeServer, log_text: io.StringIO
) -> None:
    fake: FakeOpenAI = context_fake.fake
    fake.reset()
    # Paced: the tokens arrive one read each, handed on from the network callback.
    fake.push(
        Script(tokens=TOKENS, token_delay=0.02),
        Script(tokens=TOKENS, token_delay=0.02, error_chunk_after=3),
    )
    first = ask(context_service, "ctx-request-a")
    second = ask(context_service, "ctx-request-b")

    assert fake.peers[0] == fake.peers[1]  # one upstream connection, opened by A
    assert [h.get("X-Request-ID") for h in fake.headers] == ["ctx-request-a", "ctx-request-b"]
    assert not [f for f in parse_frames(first) if f.event == "error"]
    assert [f for f in parse_frames(second) if f.event == "error"]

    lines = log_text.getvalue().splitlines()
    failed = [line for line in lines if "stream failed after the first token" in line]
    assert len(failed) == 1 and "[ctx-request-b]" in failed[0]
    assert not [line for line in lines if "[ctx-request-a]" in line]  # A logged nothing
