"""Nothing secret or internal leaves the service through what a model server sends back:
echoed keys and tokens are scrubbed, long messages cut, internal addresses and parser text
stay in the logs (scrubbed too), token URLs are shown without credentials, and a line break
in a message cannot forge a text log line.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from llm_service.observability.logs import handler_for
from tests.support.hostile_upstream import (
    MIB,
    HostileServer,
    Rss,
    echo_credentials,
    json_answer,
    normal_answer,
    raw,
    response,
)
from tests.support.servers import FakeServer, ServiceServer, free_port, settings_for
from tests.support.sse import content_of, parse_frames
from tests.support.token_server import TokenServer

KEY = "local-key-3f9a2c77"  # no well-known shape: only the configured secret can catch it
BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20}
BASE: dict[str, Any] = {"startup_wait": 0, "first_token_timeout": 20.0, "request_timeout": 30.0}
MAX_MESSAGE = 1000 + len("... (truncated)")


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer(default=normal_answer())
    yield server
    server.close()


@pytest.fixture(scope="module")
def service(hostile: HostileServer) -> Iterator[ServiceServer]:
    server = ServiceServer(settings_for(hostile.url, vllm_api_key=KEY, **BASE))
    for stream in (True, False):
        assert post(server, stream).status_code == 200
    yield server
    server.close()


@pytest.fixture
def server(hostile: HostileServer) -> HostileServer:
    hostile.answers.clear()
    hostile.requests.clear()
    return hostile


def post(service: ServiceServer, stream: bool) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=60
    )


def error_text(resp: httpx.Response) -> str:
    """The error message the client got: the body's, or the stream's error event's."""
    if resp.status_code != 200:
        return str(resp.json()["error"]["message"])
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]" and frames[-2].event == "error"
    return str(frames[-2].json()["error"]["message"])


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def mid_stream_error(message: str) -> bytes:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    error = b"data: " + orjson.dumps({"error": {"message": message}}) + b"\n\n"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        + first
        + error
        + b"data: [DONE]\n\n"
    )


# --- long messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [60_000, 16 * MIB], ids=["60k", "16m"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_huge_error_message_is_cut_in_the_body_and_the_log(
    service: ServiceServer,
    server: HostileServer,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
    size: int,
) -> None:
    caplog.set_level(logging.INFO)
    reply = response(500, orjson.dumps({"error": {"message": "m" * size}}))
    server.push(raw(reply))  # made before measuring: the server runs in this process too
    with Rss() as rss:
        resp = post(service, stream)
    assert resp.status_code == 502
    message = error_text(resp)
    assert message.startswith("model server answered 500: ")
    assert len(message) <= len("model server answered 500: ") + MAX_MESSAGE
    assert len(resp.content) < 2000
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)
    assert rss.growth < 16 * MIB, str(rss)


def test_a_huge_error_message_mid_stream_is_cut_in_the_event(
    service: ServiceServer, server: HostileServer
) -> None:
    server.push(raw(mid_stream_error("e" * 500_000)))
    resp = post(service, True)
    assert resp.status_code == 200 and content_of(parse_frames(resp.text)) == "Hi"
    message = error_text(resp)
    assert message.startswith("model server failed mid-stream: eee")
    assert message.endswith("... (truncated)") and len(message) < 1100


# --- echoed credentials --------------------------------------------------------------------------


ECHOES = [
    "Incorrect API key provided: {auth}. You can find your API key at https://example.com",
    "key {token} is not valid for this model",
]


@pytest.mark.parametrize("echo", ECHOES, ids=["bearer", "bare"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_an_echoed_api_key_is_scrubbed_from_body_and_log(
    service: ServiceServer,
    server: HostileServer,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
    echo: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.push(echo_credentials(401, echo), echo_credentials(401, echo))
    resp = post(service, stream)
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert resp.status_code == 502
    message = error_text(resp)
    assert KEY not in resp.text and KEY not in logged(caplog)
    assert "***" in message and message.startswith("model server answered 401: ")


def test_an_echoed_api_key_mid_stream_is_scrubbed_from_the_event_and_log(
    service: ServiceServer, server: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echoed = f"upstream rejected Authorization: Bearer {KEY} (sk-live-0123456789abcdef)"
    server.push(raw(mid_stream_error(echoed)))
    resp = post(service, True)
    message = error_text(resp)
    assert KEY not in resp.text and KEY not in logged(caplog)
    assert "sk-live" not in resp.text and "sk-live" not in logged(caplog)
    assert message.startswith("model server failed mid-stream: upstream rejected Authorization: ")


def test_an_echoed_oauth_token_is_scrubbed(
    server: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issuer = TokenServer(client_secret="oauth-secret-5678")
    token_http = FakeServer(app=issuer.app())
    service = ServiceServer(settings_for(
        server.url, vllm_token_url=f"{token_http.url}/oauth/token", vllm_client_id="svc",
        vllm_client_secret="oauth-secret-5678", **BASE,
    ))  # fmt: skip
    try:
        echo = echo_credentials(403, "token {token} lacks the scope for this model")
        server.push(echo)
        resp = post(service, False)
        assert resp.status_code == 502
        assert issuer.issued and server.requests[-1].headers["authorization"].startswith("Bearer ")
        for token in issuer.issued:
            assert token not in resp.text and token not in logged(caplog)
        assert (
            error_text(resp)
            == "model server answered 403: token *** lacks the scope for this model"
        )
    finally:
        service.close()
        token_http.close()


def test_token_url_credentials_stay_out_of_ready_errors_and_logs(
    server: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_url = f"http://user:hunter2-pass@127.0.0.1:{free_port()}/token?secret=qs-secret-99"
    service = ServiceServer(settings_for(
        server.url, vllm_token_url=token_url, vllm_client_id="svc",
        vllm_client_secret="oauth-secret-9012", **BASE,
    ))  # fmt: skip
    try:
        ready = httpx.get(f"{service.url}/v1/ready", timeout=30)
        chat = post(service, True)
        for resp in (ready, chat):
            assert resp.status_code == 503
            message = resp.json()["error"]["message"]
            assert message.startswith("OAuth token endpoint http://127.0.0.1:")
            assert "/token unreachable" in message
        text = ready.text + chat.text + logged(caplog)
        for secret in ("hunter2-pass", "user:", "qs-secret-99", "oauth-secret-9012"):
            assert secret not in text
    finally:
        service.close()


# --- internal addresses and parser text ------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_an_unreachable_server_is_named_by_the_reason_not_its_address(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    service = ServiceServer(settings_for(f"http://127.0.0.1:{port}", **BASE))
    try:
        resp = post(service, stream)
        assert resp.status_code == 503
        assert resp.json()["error"] == {
            "message": "model server unreachable (connection refused)",
            "type": "upstream_unavailable", "param": None, "code": 503,
        }  # fmt: skip
        ready = httpx.get(f"{service.url}/v1/ready", timeout=30)
        assert ready.json()["error"]["message"] == "model server unreachable (connection refused)"
        assert str(port) in logged(caplog)  # the details are for the operator's log
    finally:
        service.close()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_connection_that_breaks_is_502_without_details(
    service: ServiceServer, server: HostileServer, stream: bool
) -> None:
    server.push(raw(b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{"cho'))
    resp = post(service, stream)
    assert resp.status_code == 502
    broke = "stream" if stream else "connection"
    assert error_text(resp) == f"model server {broke} broke"


# --- logs -----------------------------------------------------------------------------------


def test_a_line_break_in_a_message_cannot_forge_a_text_log_line(
    service: ServiceServer, server: HostileServer
) -> None:
    forged = "\n2030-01-01 00:00:00,000 INFO llm_service.access [forged] POST / status=200\r\n"
    server.push(json_answer({"error": {"message": f"boom{forged}"}}, status=500))
    stream = io.StringIO()
    handler = handler_for(settings_for(None, log_format="text"), stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        resp = post(service, False)
        logging.getLogger("test").warning("with a traceback", exc_info=ValueError("a\nb"))
    finally:
        root.removeHandler(handler)
    assert resp.status_code == 502 and "\n2030-01-01" in resp.json()["error"]["message"]
    lines = stream.getvalue().splitlines()
    record_start = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    assert lines and all(record_start.match(line) for line in lines), lines
    assert not any(line.startswith("2030-01-01") for line in lines)
    assert any("boom\\n2030-01-01" in line for line in lines)
    assert any("with a traceback\\nValueError: a\\nb" in line for line in lines)


# --- the redactor itself --------------------------------------------------------------------


def test_the_redactor_scrubs_secrets_and_shapes_and_cuts_long_text() -> None:
    from llm_service.upstream.redact import Redactor, safe_url

    redact = Redactor(["configured-secret-1"])
    redact.add("oauth-token-abc", token=True)
    cases = {
        "API key provided: Bearer sk-abcdef0123456789": "API key provided: Bearer ***",
        "key sk-proj-abcdef0123456789 rejected": "key *** rejected",
        "Authorization: Basic dXNlcjpwYXNz": "Authorization: ***",
        '{"api_key": "k-123456"} x-api-key: abcd': '{"api_key": "***"} x-api-key: ***',
        "see https://u:p@idp/token?token=abc&secret=def&a=1": "see https://***@idp/token?token=***&secret=***&a=1",
        "configured-secret-1 and oauth-token-abc": "*** and ***",
        "jwt eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl": "jwt ***",
        "max_tokens=4096 exceeds 2048 tokens": "max_tokens=4096 exceeds 2048 tokens",
    }  # fmt: skip
    for text, scrubbed in cases.items():
        assert redact(text) == scrubbed
    long = "x" * 990 + "configured-secret-1" + "y" * 50_000_000
    out = redact(long)
    assert out.endswith("... (truncated)") and len(out) == MAX_MESSAGE
    assert "configured" not in out and "secret-1" not in out
    # Where a long text is cut, no part of a secret is left either.
    packed = redact("configured-secret-1 " * 1000)
    assert set(packed.removesuffix("... (truncated)")) <= {"*", " "}
    assert safe_url("https://u:p@idp:8443/t?secret=x#f") == "https://idp:8443/t"
