"""Bodies that are not JSON: NaN and infinities anywhere (a 422 naming where), and content
types other than JSON (a 415 naming the type), on the chat route and the LangServe routes,
before anything reaches the model server."""

from __future__ import annotations

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ServiceServer

HI = b'[{"role": "user", "content": "hi"}]'
DOC = b'{"question": "q", "reranked_docs": [{"text": "t", "metadata": {"score": %s}}]}'


def post(service: ServiceServer, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{service.url}{path}", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"messages": %s, "stream": false, "data": {"a": [1, NaN]}}' % HI, "data.a.1"),
        (b'{"messages": %s, "stream": false, "data": {"a": {"b": -Infinity}}}' % HI, "data.a.b"),
        (b'{"messages": %s, "output_guardrail_params": {"x": Infinity}}' % HI,
         "output_guardrail_params.x"),
        (b'{"question": "q", "stream": false, "reranked_docs": [{"text": "t", '
         b'"metadata": {"url": "u", "score": 1e999}}]}', "reranked_docs.0.metadata.score"),
        (b'{"messages": %s, "temperature": NaN}' % HI, "temperature"),
        (b'{"messages": %s, "top_p": Infinity}' % HI, "top_p"),
    ],
    ids=["data-nan", "data-minus-inf", "guardrail-inf", "metadata-1e999", "temperature", "top_p"],
)  # fmt: skip
def test_chat_route_refuses_nan_and_infinities_naming_where(
    service: ServiceServer, fake: FakeOpenAI, body: bytes, param: str
) -> None:
    resp = post(service, "/v1/chat/completions", body, **{"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: ") and "finite number" in error["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("invoke", b'{"input": %s}' % (DOC % b"NaN"), "input.reranked_docs.0.metadata.score"),
        ("stream", b'{"input": %s}' % (DOC % b"-Infinity"),
         "input.reranked_docs.0.metadata.score"),
        ("batch", b'{"inputs": [{"question": "a"}, %s]}' % (DOC % b"Infinity"),
         "inputs.1.reranked_docs.0.metadata.score"),
        ("invoke", b'{"input": {"question": "q"}, "config": {"metadata": {"k": [NaN]}}}',
         "config.metadata.k.0"),
        ("invoke", b'{"input": {"question": "q"}, "config": {"configurable": '
         b'{"temperature": NaN}}}', "config.configurable.temperature"),
        ("stream_events", b'{"input": {"question": "q"}, "config": {"tags": [Infinity]}}',
         "config.tags.0"),
    ],
    ids=["invoke-metadata", "stream-metadata", "batch-metadata", "config-metadata",
         "configurable", "stream_events-tags"],
)  # fmt: skip
def test_langserve_refuses_nan_and_infinities_naming_where(
    service: ServiceServer, fake: FakeOpenAI, route: str, body: bytes, param: str
) -> None:
    resp = post(service, f"/llm/{route}", body)
    assert resp.status_code == 422, resp.text  # a status, before any stream starts
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ") and "finite number" in error["message"]
    assert fake.requests == []


NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "",
]
CHAT = b'{"messages": %s, "stream": false}' % HI
INVOKE = b'{"input": {"messages": %s}}' % HI


@pytest.mark.parametrize("content_type", NOT_JSON)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/llm/invoke", INVOKE),
        ("/llm/batch", b'{"inputs": [{"messages": %s}]}' % HI),
        ("/llm/stream", INVOKE),
        ("/llm/stream_events", INVOKE),
    ],
    ids=["chat", "invoke", "batch", "stream", "stream_events"],
)
def test_a_body_that_says_it_is_not_json_is_415(
    service: ServiceServer, fake: FakeOpenAI, path: str, body: bytes, content_type: str
) -> None:
    resp = post(service, path, body, **{"content-type": content_type})
    assert resp.status_code == 415, resp.text
    assert resp.json() == {
        "error": {
            "message": f"content-type {content_type!r} is not JSON; send application/json",
            "type": "invalid_request_error",
            "param": "content-type",
            "code": 415,
        }
    }
    assert fake.requests == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json", None],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", CHAT), ("/llm/invoke", INVOKE)],
    ids=["chat", "invoke"],
)
def test_json_content_types_and_none_are_read(
    service: ServiceServer, fake: FakeOpenAI, path: str, body: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    resp = post(service, path, body, **headers)
    assert resp.status_code == 200, resp.text
    assert len(fake.requests) == 1
