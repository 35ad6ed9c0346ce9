"""The fault matrix (docs/faults.md): every model-server fault has a defined outcome, and
nothing hangs (every call has a client timeout; the fake sees its stream closed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, free_port, settings_for
from tests.support.sse import content_of, parse_frames

BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50}
TOKENS = [f" t{i}" for i in range(10)]


def post(server: ServiceServer, stream: bool) -> httpx.Response:
    # The client timeout is the "no hang" check: every row answers long before it.
    return httpx.post(
        f"{server.url}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=10
    )


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == resp.status_code
    return body["error"]  # type: ignore[no-any-return]


def assert_upstream_closed(fake: FakeOpenAI) -> None:
    deadline = time.monotonic() + 1.0
    while fake.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_streams == 0


@pytest.fixture(scope="session")
def service(fake_server: FakeServer, transport: str) -> Iterator[ServiceServer]:
    """The service in front of the fake model server, over each streaming transport."""
    server = ServiceServer(
        settings_for(fake_server.url, request_timeout=1.0, upstream_transport=transport)
    )
    yield server
    server.close()


@pytest.fixture(scope="module", params=["refused", "dns"])
def unreachable(request: pytest.FixtureRequest, transport: str) -> Iterator[ServiceServer]:
    endpoint = {
        "refused": f"http://127.0.0.1:{free_port()}",
        "dns": "http://no-such-model-server.invalid:8000",
    }[request.param]
    server = ServiceServer(
        settings_for(endpoint, connect_timeout=3.0, upstream_transport=transport)
    )
    yield server
    server.close()


# --- before the first token: a status code -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_model_server_is_503(unreachable: ServiceServer, stream: bool) -> None:
    resp = post(unreachable, stream)
    assert resp.status_code == 503
    error = error_of(resp)
    assert error["type"] == "upstream_unavailable" and "unreachable" in error["message"]


# (script, status, type, message part, Retry-After)
BEFORE_FIRST_TOKEN = {
    "slow-first-token": (Script(first_token_delay=1.5), 504, "upstream_timeout", "TIMEOUT", None),
    "429-retry-after": (Script(status=429, headers={"Retry-After": "7"}), 503,
                        "upstream_unavailable", "answered 429", "7"),
    "500": (Script(status=500), 502, "upstream_error", "answered 500: fake error 500", None),
    "502": (Script(status=502), 502, "upstream_error", "answered 502: fake error 502", None),
    "503": (Script(status=503), 503, "upstream_unavailable", "answered 503", "1"),
    "503-retry-after": (Script(status=503, headers={"Retry-After": "30"}), 503,
                        "upstream_unavailable", "answered 503", "30"),
    "401": (Script(status=401, error_body={"error": {"message": "invalid api key"}}), 502,
            "upstream_error", "answered 401: invalid api key", None),
    "empty-200": (Script(empty_200=True), 502, "upstream_error", "", None),
}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("row", list(BEFORE_FIRST_TOKEN))
def test_fault_before_the_first_token_is_a_status_code(
    service: ServiceServer, fake: FakeOpenAI, row: str, stream: bool
) -> None:
    script, status, kind, part, retry_after = BEFORE_FIRST_TOKEN[row]
    fake.push(script)
    resp = post(service, stream)
    assert resp.status_code == status, resp.text
    error = error_of(resp)
    assert error["type"] == kind and part in error["message"]
    assert resp.headers.get("retry-after") == retry_after
    assert_upstream_closed(fake)


def test_malformed_first_chunk_is_502(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(malformed_after=0, role_chunk=False))
    resp = post(service, True)
    assert resp.status_code == 502
    assert "malformed" in error_of(resp)["message"]
    assert_upstream_closed(fake)


# --- after the first token: an SSE error event, then [DONE] ----------------------------------

AFTER_FIRST_TOKEN = {
    "stall-mid-stream": (Script(tokens=TOKENS, hang_after=2), 504, "upstream_timeout"),
    "connection-drops": (Script(tokens=TOKENS, die_after=2), 502, "upstream_error"),
    "malformed-chunk": (Script(tokens=TOKENS, malformed_after=2), 502, "upstream_error"),
    "vllm-error-chunk": (Script(tokens=TOKENS, error_chunk_after=2), 502, "upstream_error"),
    "no-done-no-finish": (Script(tokens=TOKENS, send_done=False, finish_reason=""), 502,
                          "upstream_error"),
}  # fmt: skip


@pytest.mark.parametrize("row", list(AFTER_FIRST_TOKEN))
def test_fault_mid_stream_is_error_event_then_done(
    service: ServiceServer, fake: FakeOpenAI, row: str
) -> None:
    script, code, kind = AFTER_FIRST_TOKEN[row]
    fake.push(script)
    resp = post(service, True)
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]"
    assert frames[-2].event == "error"
    error = frames[-2].json()["error"]
    assert error["code"] == code and error["type"] == kind
    if row != "no-done-no-finish":
        assert content_of(frames) == " t0 t1"  # what came before the fault is relayed
    assert_upstream_closed(fake)


def test_stall_mid_stream_whole_answer_is_504(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(tokens=TOKENS, first_token_delay=1.5))
    resp = post(service, False)
    assert resp.status_code == 504 and error_of(resp)["type"] == "upstream_timeout"


def test_stream_without_done_but_with_finish_reason_is_complete(
    service: ServiceServer, fake: FakeOpenAI
) -> None:
    fake.push(Script(tokens=TOKENS, send_done=False))
    frames = parse_frames(post(service, True).text)
    assert frames[-1].raw == "[DONE]"
    assert frames[-2].json()["choices"][0]["finish_reason"] == "stop"
    assert content_of(frames) == "".join(TOKENS)
    assert all(f.event is None for f in frames)


def test_upstream_401_does_not_leak_our_credentials(
    fake_server: FakeServer, fake: FakeOpenAI, transport: str
) -> None:
    settings = settings_for(
        fake_server.url, vllm_api_key="sk-secret-upstream", upstream_transport=transport
    )
    server = ServiceServer(settings)
    try:
        fake.push(Script(status=401))
        resp = post(server, True)
        assert resp.status_code == 502
        assert fake.headers[-1]["Authorization"] == "Bearer sk-secret-upstream"
        assert "sk-secret" not in resp.text
    finally:
        server.close()
