"""Bad input: a 4xx naming the field and the reason, in the one error shape, nothing sent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ServiceServer

USER = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("body", "param", "reason"),
    [
        ({"messages": []}, "messages", "at least one message"),
        ({}, "messages", "give 'messages' or 'question'"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "Input should be"),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "Field required"),
        ({"messages": "hello"}, "messages", "valid array"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content", "valid string"),
        ({"messages": USER, "max_new_tokens": -5}, "max_new_tokens", "greater than or equal to 1"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": USER, "max_new_tokens": 10**9}, "max_new_tokens", "above the limit"),
        ({"messages": USER, "temperature": 7}, "temperature", "less than or equal to 2"),
        ({"messages": USER, "top_p": 0}, "top_p", "greater than 0"),
        ({"messages": USER, "stream": "maybe"}, "stream", "valid boolean"),
        ({"messages": USER, "max_tokens": 5, "max_new_tokens": 6}, "max_tokens", "differs"),
        ({"question": ""}, "question", "at least 1 character"),
        ({"question": "q", "reranked_docs": [{"metadata": {}}]}, "reranked_docs.0.text",
         "Field required"),
    ],
)  # fmt: skip
def test_bad_field_is_422_naming_it(
    service: ServiceServer, fake: FakeOpenAI, body: dict[str, Any], param: str, reason: str
) -> None:
    resp = httpx.post(f"{service.url}/v1/chat/completions", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == 422
    assert error["param"] == param
    assert f"{param}: " in error["message"] and reason in error["message"]
    assert fake.requests == []  # nothing reached the model server


def test_invalid_json_is_422(service: ServiceServer, fake: FakeOpenAI) -> None:
    resp = httpx.post(
        f"{service.url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "body"
    assert "Invalid JSON" in resp.json()["error"]["message"]


def test_oversized_body_is_413(service: ServiceServer, fake: FakeOpenAI) -> None:
    huge = {"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    resp = httpx.post(f"{service.url}/v1/chat/completions", json=huge, timeout=30)
    assert resp.status_code == 413
    assert resp.json()["error"]["param"] == "body"
    assert fake.requests == []


def test_oversized_chunked_body_is_413(service: ServiceServer, fake: FakeOpenAI) -> None:
    def body() -> Any:  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    resp = httpx.post(f"{service.url}/v1/chat/completions", content=body(), timeout=30)
    assert resp.status_code == 413


def test_unknown_route_and_method(service: ServiceServer) -> None:
    for resp, status in (
        (httpx.get(f"{service.url}/v1/chat/completions"), 405),
        (httpx.get(f"{service.url}/nope"), 404),
    ):
        assert resp.status_code == status
        assert resp.json()["error"]["code"] == status
