"""Credentials towards the model server, with a real local OAuth2 token endpoint
(tests/support/token_server.py) and the fake model server checking bearer tokens."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from llm_service.settings import Settings
from llm_service.upstream import build_auth
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.token_server import TokenServer

SECRET = "s3cr3t-do-not-log"


@pytest.fixture
def tokens() -> Iterator[tuple[TokenServer, FakeServer]]:
    issuer = TokenServer(client_secret=SECRET, expires_in=300)
    server = FakeServer(app=issuer.app())
    yield issuer, server
    server.close()


def oauth_service(
    transport: str, fake_url: str, token_url: str, **overrides: object
) -> ServiceServer:
    return ServiceServer(
        settings_for(
            fake_url,
            vllm_token_url=token_url,
            vllm_client_id="svc",
            vllm_client_secret=SECRET,
            startup_wait=0,
            upstream_transport=transport,
            **overrides,
        )
    )


def ask(service: ServiceServer) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def wait_for(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_token_fetched_at_startup_and_sent(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    tokens: tuple[TokenServer, FakeServer],
) -> None:
    issuer, token_http = tokens
    fake.accept_token = issuer.valid
    service = oauth_service(transport, fake_server.url, f"{token_http.url}/oauth/token")
    try:
        wait_for(lambda: len(issuer.issued) == 1)  # before any request
        assert ask(service).status_code == 200
        assert ask(service).status_code == 200
        assert fake.headers[-1]["Authorization"] == "Bearer tok-1"
        assert len(issuer.issued) == 1  # cached, not fetched per request
    finally:
        service.close()


def test_token_refreshed_in_background_before_expiry(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    tokens: tuple[TokenServer, FakeServer],
) -> None:
    issuer, token_http = tokens
    issuer.expires_in = 1.0  # refreshed at half its life
    fake.accept_token = issuer.valid
    service = oauth_service(transport, fake_server.url, f"{token_http.url}/oauth/token")
    try:
        wait_for(lambda: len(issuer.issued) >= 4, limit=6)  # with no traffic at all
        assert ask(service).status_code == 200
        assert fake.headers[-1]["Authorization"] in {f"Bearer {t}" for t in issuer.issued[-2:]}
        assert len(fake.requests) == 1  # never a 401 on the way
    finally:
        service.close()


def test_401_refreshes_once_and_retries_once(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    tokens: tuple[TokenServer, FakeServer],
) -> None:
    issuer, token_http = tokens
    fake.accept_token = issuer.valid
    service = oauth_service(transport, fake_server.url, f"{token_http.url}/oauth/token")
    try:
        assert ask(service).status_code == 200
        issuer.revoke_all()  # e.g. the identity provider rotated its keys
        resp = ask(service)
        assert resp.status_code == 200
        assert len(issuer.issued) == 2
        assert [h["Authorization"] for h in fake.headers] == [
            "Bearer tok-1", "Bearer tok-1", "Bearer tok-2",
        ]  # fmt: skip
        # a server that keeps refusing: one refresh, one retry, then the 401 as a 502
        fake.accept_token = lambda token: False
        resp = ask(service)
        assert resp.status_code == 502
        assert "401" in resp.json()["error"]["message"]
        assert len(issuer.issued) == 3 and len(fake.requests) == 5
    finally:
        service.close()


def test_token_endpoint_down_is_a_clear_503_then_recovers(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    tokens: tuple[TokenServer, FakeServer],
) -> None:
    issuer, token_http = tokens
    issuer.down = True
    fake.accept_token = issuer.valid
    service = oauth_service(transport, fake_server.url, f"{token_http.url}/oauth/token")
    try:
        resp = ask(service)
        assert resp.status_code == 503
        err = resp.json()["error"]
        assert "OAuth token endpoint" in err["message"] and "503" in err["message"]
        assert fake.requests == []  # nothing sent without a token
        assert httpx.get(f"{service.url}/v1/health_check").status_code == 200  # still alive
        issuer.down = False
        wait_for(lambda: ask(service).status_code == 200, limit=10)
    finally:
        service.close()


def test_token_endpoint_unreachable_is_503(
    transport: str, fake: FakeOpenAI, fake_server: FakeServer
) -> None:
    closed = FakeServer()
    url = f"{closed.url}/oauth/token"
    closed.close()
    service = oauth_service(transport, fake_server.url, url)
    try:
        resp = ask(service)
        assert resp.status_code == 503
        assert "unreachable" in resp.json()["error"]["message"]
    finally:
        service.close()


def test_static_key_overrides_oauth(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    tokens: tuple[TokenServer, FakeServer],
) -> None:
    issuer, token_http = tokens
    service = oauth_service(
        transport, fake_server.url, f"{token_http.url}/oauth/token", vllm_api_key="static-key-1"
    )
    try:
        assert ask(service).status_code == 200
        assert fake.headers[-1]["Authorization"] == "Bearer static-key-1"
        assert issuer.issued == []
    finally:
        service.close()


def test_secrets_stay_out_of_logs_errors_and_reprs(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    tokens: tuple[TokenServer, FakeServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    issuer, token_http = tokens
    token_url = f"{token_http.url}/oauth/token"
    settings = settings_for(
        fake_server.url, vllm_token_url=token_url, vllm_client_id="svc",
        vllm_client_secret=SECRET, vllm_api_key=None,
    )  # fmt: skip
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert SECRET not in repr(build_auth(settings))
    keyed = Settings(_env_file=None, vllm_api_key="static-key-2")
    assert "static-key-2" not in repr(keyed) and "static-key-2" not in repr(build_auth(keyed))
    caplog.set_level(logging.DEBUG)
    issuer.down = True
    fake.accept_token = lambda token: False
    service = oauth_service(transport, fake_server.url, token_url, log_level="DEBUG")
    try:
        failed = ask(service)
        issuer.down = False
        wait_for(lambda: len(issuer.issued) >= 1, limit=10)
        refused = ask(service)  # 401 -> refresh -> 401
    finally:
        service.close()
    for resp in (failed, refused):
        assert resp.status_code in (502, 503)
        assert SECRET not in resp.text and "tok-" not in resp.text
    assert caplog.records  # the failures were logged ...
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged and "tok-1" not in logged  # ... without secrets
