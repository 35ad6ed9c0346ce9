"""A per-request template is data: a format spec or a repeated placeholder cannot make the
service build (or send) a prompt past ``LLM_MAX_INPUT_CHARS``; the request is a 422 naming the
field, answered at once, with no memory to speak of."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.rss import MB, RSSGrowth
from tests.support.servers import ServiceServer

# A 102-byte body that asked for a 200 M character prompt before templates were checked.
WIDE = "{question:>200000000}"
# 1 M characters of template that repeat a 1,000-character question 100,000 times: 100 M.
REPEATED = "{question}" * 100_000


def post(service: ServiceServer, path: str, body: Any) -> tuple[httpx.Response, float, int]:
    """The response, its seconds and how many bytes this process grew meanwhile."""
    with RSSGrowth() as grown:
        start = time.monotonic()
        resp = httpx.post(f"{service.url}{path}", json=body, timeout=60)
        elapsed = time.monotonic() - start
    return resp, elapsed, grown.bytes


def assert_refused(resp: httpx.Response, param: str, reason: str) -> None:
    assert resp.status_code == 422, resp.text[:300]
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: ") and reason in error["message"]


@pytest.mark.parametrize(
    ("template", "question", "reason"),
    [(WIDE, "hi", "format spec"), (REPEATED, "x" * 1000, "the prompt would hold 100000000")],
)
def test_chat_route_refuses_a_template_that_would_blow_up(
    service: ServiceServer, fake: FakeOpenAI, template: str, question: str, reason: str
) -> None:
    body = {"question": question, "user_prompt_template": template, "stream": False}
    resp, elapsed, grown = post(service, "/v1/chat/completions", body)
    assert_refused(resp, "user_prompt_template", reason)
    assert elapsed < 1.0 and grown < 50 * MB, (elapsed, grown / MB)
    assert fake.requests == []  # nothing reached the model server


@pytest.mark.parametrize("route", ["invoke", "stream", "batch"])
@pytest.mark.parametrize(
    ("template", "question", "reason"),
    [(WIDE, "hi", "format spec"), (REPEATED, "x" * 1000, "the prompt would hold 100000000")],
)
def test_langserve_refuses_a_template_that_would_blow_up(
    service: ServiceServer,
    fake: FakeOpenAI,
    route: str,
    template: str,
    question: str,
    reason: str,
) -> None:
    inp = {"question": question, "user_prompt_template": template}
    body = {"inputs": [inp]} if route == "batch" else {"input": inp}
    resp, elapsed, grown = post(service, f"/llm/{route}", body)
    where = "inputs.0" if route == "batch" else "input"
    assert_refused(resp, f"{where}.user_prompt_template", reason)  # a status, not an SSE event
    assert elapsed < 1.0 and grown < 50 * MB, (elapsed, grown / MB)
    assert fake.requests == []


def test_template_text_counts_in_the_input_size(service: ServiceServer, fake: FakeOpenAI) -> None:
    body = {
        "question": "q" * 900_000,
        "system_prompt_template": "s" * 700_000 + "{reranked_docs}",
        "user_prompt_template": "u" * 700_000 + "{question}",
        "stream": False,
    }  # 2.3 M characters together; the limit is 2 M
    resp = httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 422, resp.text[:300]
    assert "and templates together); the limit is 2000000" in resp.json()["error"]["message"]
    assert fake.requests == []
