"""Backpressure and input limits: 429 past the concurrency cap, 413/422 past the size limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def limited(fake_server: FakeServer) -> Iterator[ServiceServer]:
    server = ServiceServer(
        settings_for(
            fake_server.url,
            max_concurrent=2,
            max_messages=3,
            max_documents=2,
            max_input_chars=1000,
            max_body_bytes=64 * 1024,
        )
    )
    yield server
    server.close()


def post(server: ServiceServer, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)


def active(server: ServiceServer) -> int:
    return server.app.state.service.gate.active  # type: ignore[no-any-return]


def wait_idle(server: ServiceServer) -> None:
    deadline = time.monotonic() + 2
    while active(server) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert active(server) == 0


def test_past_the_cap_is_429_with_retry_after_at_once(
    limited: ServiceServer, fake: FakeOpenAI
) -> None:
    slow = Script(tokens=[f" t{i}" for i in range(100)], token_delay=0.05)
    fake.push(slow, slow)
    body = {"messages": USER, "stream": True, "max_tokens": 100}
    readers = []  # kept referenced: a dropped iterator closes its response
    with httpx.Client(timeout=10) as client, ExitStack() as stack:
        for _ in range(2):  # two streams in flight: the cap
            resp = stack.enter_context(
                client.stream("POST", f"{limited.url}/v1/chat/completions", json=body)
            )
            assert resp.status_code == 200
            readers.append(resp.iter_bytes())
            next(readers[-1])
        assert active(limited) == 2
        started = len(fake.requests)
        # The third is refused without waiting for a slot (the streams run for 5 s more).
        busy = httpx.post(f"{limited.url}/v1/chat/completions", json=body, timeout=1.0)
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"] == {
            "message": "too many concurrent requests (limit 2); retry later",
            "type": "rate_limit_error",
            "param": None,
            "code": 429,
        }
        assert len(fake.requests) == started  # nothing reached the model server
        # Health routes are not generations: they still answer.
        assert httpx.get(f"{limited.url}/v1/health_check").status_code == 200
    wait_idle(limited)  # the clients went away: their slots are free again
    assert post(limited, {"messages": USER, "stream": False}).status_code == 200
    wait_idle(limited)


def test_failed_requests_free_their_slot(limited: ServiceServer, fake: FakeOpenAI) -> None:
    for _ in range(5):  # more than the cap, one after another: each frees its slot
        fake.push(Script(status=500))
        assert post(limited, {"messages": USER}).status_code == 502
        assert post(limited, {"messages": []}).status_code == 422
    wait_idle(limited)
    assert post(limited, {"messages": USER, "stream": False}).status_code == 200


@pytest.mark.parametrize(
    ("body", "param", "reason"),
    [
        ({"messages": USER * 4}, "messages", "4 messages and history turns; the limit is 3"),
        ({"question": "q", "history": [{"question": "a", "answer": "b"}] * 4}, "history",
         "the limit is 3"),
        ({"question": "q", "reranked_docs": [{"text": "d"}] * 3}, "reranked_docs",
         "3 documents; the limit is 2"),
        ({"messages": [{"role": "user", "content": "x" * 1001}]}, "messages",
         "1001 characters"),
        ({"question": "q" * 400, "reranked_docs": [{"text": "d" * 601}]}, "reranked_docs",
         "1001 characters"),
    ],
)  # fmt: skip
def test_input_limits_are_422_naming_the_field(
    limited: ServiceServer, fake: FakeOpenAI, body: dict[str, Any], param: str, reason: str
) -> None:
    resp = post(limited, body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: ") and reason in error["message"]
    assert fake.requests == []


def test_at_the_limits_is_served(limited: ServiceServer, fake: FakeOpenAI) -> None:
    body = {"question": "q" * 498, "reranked_docs": [{"text": "d" * 500}] * 1,
            "history": [{"question": "a", "answer": "b"}] * 1, "stream": False}  # fmt: skip
    assert post(limited, body).status_code == 200
    assert post(limited, {"messages": USER * 3, "stream": False}).status_code == 200


def test_body_over_the_byte_limit_is_413(limited: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(limited, {"messages": [{"role": "user", "content": "x" * 70_000}]})
    assert resp.status_code == 413
    assert resp.json()["error"]["param"] == "body"
    assert fake.requests == []


def test_no_cap_by_default(service: ServiceServer) -> None:
    assert service.app.state.service.gate.limit == 0


def test_langserve_routes_share_the_cap(limited: ServiceServer, fake: FakeOpenAI) -> None:
    """/llm/stream and /llm/invoke generate too: they count against LLM_MAX_CONCURRENT."""
    slow = Script(tokens=[f" t{i}" for i in range(100)], token_delay=0.05)
    fake.push(slow, slow)
    body = {"input": {"messages": USER}}
    readers = []  # kept referenced: a dropped iterator closes its response
    with httpx.Client(timeout=10) as client, ExitStack() as stack:
        for _ in range(2):  # two LangServe streams in flight: the cap
            resp = stack.enter_context(
                client.stream("POST", f"{limited.url}/llm/stream", json=body)
            )
            assert resp.status_code == 200
            readers.append(resp.iter_lines())
            assert next(readers[-1]) == "event: metadata"
        assert active(limited) == 2
        refused = client.post(f"{limited.url}/llm/invoke", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        refused = client.post(f"{limited.url}/v1/chat/completions", json={"messages": USER})
        assert refused.status_code == 429
    wait_idle(limited)  # streams closed by their clients give their places back
    ok = httpx.post(f"{limited.url}/llm/invoke", json=body, timeout=10)
    assert ok.status_code == 200
    wait_idle(limited)
