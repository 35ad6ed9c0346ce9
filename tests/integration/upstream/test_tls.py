"""TLS towards the model server: an HTTPS fake server whose certificate is signed by a
private CA made here (trustme). LLM_TLS_CA_BUNDLE trusts it, LLM_TLS_SKIP_VERIFY skips the
check, and without either the request fails with a message that says what to set."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from llm_service.settings import Settings, SettingsError
from tests.support.servers import FakeServer, ServiceServer, settings_for


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_fake(ca: trustme.CA) -> Iterator[FakeServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeServer(ssl_context=context)
    yield server
    server.close()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def ask(service: ServiceServer, stream: bool) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def run(transport: str, https_fake: FakeServer, **overrides: Any) -> list[httpx.Response]:
    settings = settings_for(
        https_fake.url, startup_wait=0, upstream_transport=transport, **overrides
    )
    service = ServiceServer(settings)
    try:
        ready = httpx.get(f"{service.url}/v1/ready", timeout=10)
        return [ready, ask(service, True), ask(service, False)]
    finally:
        service.close()


def test_private_ca_bundle_is_trusted(
    transport: str, https_fake: FakeServer, ca_file: Path
) -> None:
    assert https_fake.url.startswith("https://")
    for resp in run(transport, https_fake, tls_ca_bundle=ca_file):
        assert resp.status_code == 200, resp.text
    assert len(https_fake.fake.requests) >= 2


def test_untrusted_certificate_is_refused_with_advice(
    transport: str, https_fake: FakeServer
) -> None:
    before = len(https_fake.fake.requests)
    ready, streamed, whole = run(transport, https_fake)
    assert ready.status_code == 503
    for resp in (streamed, whole):
        assert resp.status_code == 502
        message = resp.json()["error"]["message"]
        assert "certificate" in message and "LLM_TLS_CA_BUNDLE" in message
    assert len(https_fake.fake.requests) == before  # nothing reached the server


def test_skip_verify_connects_without_the_ca(transport: str, https_fake: FakeServer) -> None:
    for resp in run(transport, https_fake, tls_skip_verify=True):
        assert resp.status_code == 200


def test_missing_ca_bundle_file_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="LLM_TLS_CA_BUNDLE"):
        Settings.load(None, tls_ca_bundle=tmp_path / "nope.pem")
