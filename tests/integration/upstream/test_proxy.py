"""Proxies towards the model server: a real forward proxy (proxy.py, in a child process)
between the service and the fake model server.

Every upstream path goes through it when HTTP_PROXY / HTTPS_PROXY say so: streams (the lean
transport: absolute-form requests, CONNECT tunnels for https), whole answers and
/v1/models (aiohttp), the OAuth token endpoint, and ChatOpenAI. NO_PROXY exempts hosts, a
dead proxy is a clear 503 (never a direct connection instead), LLM_UPSTREAM_TRUST_ENV=false
ignores all of it. The proxy's access log proves what went through it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support.fake_openai import FakeOpenAI
from tests.support.forward_proxy import ForwardProxy
from tests.support.servers import (
    FakeServer,
    ServiceServer,
    ask,
    every_path,
    free_port,
    settings_for,
)
from tests.support.token_server import TokenServer

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(tmp_path_factory.mktemp("proxy"))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def https_fake(ca: trustme.CA) -> Iterator[FakeServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeServer(ssl_context=context)
    yield server
    server.close()


def dead_proxy() -> str:
    """A proxy URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def assert_ok(responses: list[httpx.Response]) -> None:
    ready, streamed, whole = responses
    assert ready.status_code == 200, ready.text
    assert streamed.status_code == 200, streamed.text
    assert "data: [DONE]" in streamed.text
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["message"]["content"]


def test_http_streams_whole_answers_and_models_go_through_the_proxy(
    transport: str, fake: FakeOpenAI, fake_server: FakeServer, forward_proxy: ForwardProxy
) -> None:
    origin = f"127.0.0.1:{fake_server.port}"
    before = forward_proxy.wait_for("POST", f"{origin}{CHAT}", timeout=0)
    assert_ok(
        every_path(fake_server.url, upstream_transport=transport, http_proxy=forward_proxy.url)
    )
    assert len(fake.requests) == 2
    assert forward_proxy.wait_for("POST", f"{origin}{CHAT}", before + 2) == before + 2
    assert forward_proxy.wait_for("GET", f"{origin}/v1/models") >= 1


def test_https_goes_through_a_connect_tunnel(
    transport: str, https_fake: FakeServer, ca_file: Path, forward_proxy: ForwardProxy
) -> None:
    before = len(https_fake.fake.requests)
    tunnels = forward_proxy.wait_for("CONNECT", f"127.0.0.1:{https_fake.port}", timeout=0)
    # The http proxy is a dead one: https must take HTTPS_PROXY, not HTTP_PROXY.
    assert_ok(
        every_path(
            https_fake.url,
            upstream_transport=transport,
            https_proxy=forward_proxy.url,
            http_proxy=dead_proxy(),
            tls_ca_bundle=ca_file,
        )
    )
    assert len(https_fake.fake.requests) == before + 2
    # At least one tunnel for the stream and one for aiohttp's calls (kept alive between).
    assert forward_proxy.wait_for("CONNECT", f"127.0.0.1:{https_fake.port}", tunnels + 2) >= (
        tunnels + 2
    )


def test_the_tunnelled_server_certificate_is_still_checked(
    transport: str, https_fake: FakeServer, forward_proxy: ForwardProxy
) -> None:
    ready, streamed, whole = every_path(
        https_fake.url, upstream_transport=transport, https_proxy=forward_proxy.url
    )
    assert ready.status_code == 503
    for resp in (streamed, whole):
        assert resp.status_code == 502
        assert "certificate" in resp.json()["error"]["message"]


def test_no_proxy_hosts_are_reached_directly(
    transport: str, fake: FakeOpenAI, fake_server: FakeServer
) -> None:
    # The proxy is dead: only a direct connection can answer.
    for no_proxy in ("127.0.0.1", f"localhost, 127.0.0.1:{fake_server.port}", "127.0.0.0/8", "*"):
        assert_ok(
            every_path(
                fake_server.url,
                upstream_transport=transport,
                http_proxy=dead_proxy(),
                no_proxy=no_proxy,
            )
        )
    # An entry for another port, or a name that only ends like the host, is no exemption.
    for no_proxy in (f"127.0.0.1:{fake_server.port + 1}", "0.0.1"):
        ready, streamed, whole = every_path(
            fake_server.url,
            upstream_transport=transport,
            http_proxy=dead_proxy(),
            no_proxy=no_proxy,
        )
        assert (ready.status_code, streamed.status_code, whole.status_code) == (503, 503, 503)


def test_a_dead_proxy_is_a_clear_503_and_nothing_goes_direct(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    https_fake: FakeServer,
    ca_file: Path,
) -> None:
    before = len(https_fake.fake.requests)
    for url, proxy in (
        (fake_server.url, {"http_proxy": dead_proxy()}),
        (https_fake.url, {"https_proxy": dead_proxy(), "tls_ca_bundle": ca_file}),
    ):
        ready, streamed, whole = every_path(url, upstream_transport=transport, **proxy)
        assert ready.status_code == 503
        for resp in (streamed, whole):
            assert resp.status_code == 503, resp.text
            message = resp.json()["error"]["message"]
            assert "proxy unreachable (connection refused)" in message
    assert fake.requests == []
    assert len(https_fake.fake.requests) == before


def test_trust_env_false_ignores_the_proxy(
    transport: str, fake: FakeOpenAI, fake_server: FakeServer
) -> None:
    assert_ok(
        every_path(
            fake_server.url,
            upstream_transport=transport,
            http_proxy=dead_proxy(),
            https_proxy=dead_proxy(),
            upstream_trust_env=False,
        )
    )
    assert len(fake.requests) == 2


def test_proxy_credentials_and_a_407(
    transport: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    https_fake: FakeServer,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    guarded = ForwardProxy(tmp_path, auth="scott:tiger-pw")
    try:
        wrong = guarded.url.replace("tiger-pw", "wrong-pw")
        anonymous = f"http://127.0.0.1:{guarded.port}"
        assert_ok(every_path(fake_server.url, upstream_transport=transport, http_proxy=guarded.url))
        assert_ok(
            every_path(
                https_fake.url,
                upstream_transport=transport,
                https_proxy=guarded.url,
                tls_ca_bundle=ca_file,
            )
        )
        assert guarded.wait_for("CONNECT", f"127.0.0.1:{https_fake.port}") >= 1
        for url, setting in (
            (fake_server.url, {"http_proxy": wrong}),
            (fake_server.url, {"http_proxy": anonymous}),
            (https_fake.url, {"https_proxy": wrong, "tls_ca_bundle": ca_file}),
        ):
            _, streamed, whole = every_path(url, upstream_transport=transport, **setting)
            for resp in (streamed, whole):
                assert resp.status_code == 502, resp.text
                message = resp.json()["error"]["message"]
                assert "407 Proxy Authentication Required" in message
                assert "wrong-pw" not in resp.text
        logs = "\n".join(record.getMessage() for record in caplog.records)
        assert "407" in logs  # the refusals were logged, without the passwords
        assert "tiger-pw" not in logs and "wrong-pw" not in logs
    finally:
        guarded.close()


def test_the_oauth_token_endpoint_goes_through_the_proxy(
    transport: str, fake: FakeOpenAI, fake_server: FakeServer, forward_proxy: ForwardProxy
) -> None:
    issuer = TokenServer(client_secret="proxied-secret")
    token_http = FakeServer(app=issuer.app())
    try:
        fake.accept_token = issuer.valid
        target = f"127.0.0.1:{token_http.port}/oauth/token"
        before = forward_proxy.wait_for("POST", target, timeout=0)
        assert_ok(
            every_path(
                fake_server.url,
                upstream_transport=transport,
                http_proxy=forward_proxy.url,
                vllm_token_url=f"{token_http.url}/oauth/token",
                vllm_client_id="svc",
                vllm_client_secret="proxied-secret",
            )
        )
        assert issuer.issued
        assert forward_proxy.wait_for("POST", target, before + 1) >= before + 1
        # A dead proxy stops the token fetch too: a 503 that says so, not a direct call.
        issued = len(issuer.issued)
        ready, streamed, _ = every_path(
            fake_server.url,
            upstream_transport=transport,
            http_proxy=dead_proxy(),
            no_proxy=f"127.0.0.1:{fake_server.port}",  # the model server itself is direct
            vllm_token_url=f"{token_http.url}/oauth/token",
            vllm_client_id="svc",
            vllm_client_secret="proxied-secret",
        )
        assert ready.status_code == 503
        assert streamed.status_code == 503
        assert "OAuth token endpoint" in streamed.json()["error"]["message"]
        assert len(issuer.issued) == issued
    finally:
        fake.accept_token = None
        token_http.close()


@pytest.mark.parametrize(
    ("mode", "path"),
    [
        ({"model_client": "chatopenai"}, CHAT),
        ({"model_api": "completions", "model_server": "vllm"}, "/v1/completions"),
    ],
    ids=["chatopenai", "vllmopenai"],
)
def test_the_openai_sdk_clients_go_through_the_same_proxy(
    transport: str,
    mode: dict[str, str],
    path: str,
    fake: FakeOpenAI,
    fake_server: FakeServer,
    forward_proxy: ForwardProxy,
) -> None:
    target = f"127.0.0.1:{fake_server.port}{path}"
    before = forward_proxy.wait_for("POST", target, timeout=0)
    _, streamed, whole = every_path(
        fake_server.url, upstream_transport=transport, http_proxy=forward_proxy.url, **mode
    )
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert whole.status_code == 200, whole.text
    assert forward_proxy.wait_for("POST", target, before + 2) >= before + 2
    # ... and they are as blind to a proxy that is switched off as the lean client.
    assert ask_direct(fake_server.url, upstream_transport=transport, **mode).status_code == 200


def ask_direct(url: str, **mode: str) -> httpx.Response:
    service = ServiceServer(
        settings_for(url, startup_wait=0, http_proxy=dead_proxy(), upstream_trust_env=False, **mode)
    )
    try:
        return ask(service, True)
    finally:
        service.close()
