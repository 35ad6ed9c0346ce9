"""Mutual TLS towards the model server: an HTTPS fake server that requires a client
certificate signed by a private CA (trustme). LLM_TLS_CLIENT_CERT (and LLM_TLS_CLIENT_KEY)
give the service one, on every path (streams, whole answers, /v1/models, ChatOpenAI),
through a proxy's tunnel too; without it the request fails with a message that says what to set."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from llm_service.settings import Settings, SettingsError
from tests.support.forward_proxy import ForwardProxy
from tests.support.servers import FakeServer, every_path


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CA, the client certificate and its key apart, and both in one file."""
    folder = tmp_path_factory.mktemp("mtls")
    client = ca.issue_cert("llm-service.example")
    paths = {
        "ca": folder / "ca.pem",
        "cert": folder / "client.pem",
        "key": folder / "client.key",
        "both": folder / "client-with-key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    return paths


@pytest.fixture(scope="module")
def mtls_fake(ca: trustme.CA) -> Iterator[FakeServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED  # no certificate of our CA, no connection
    ca.configure_trust(context)
    server = FakeServer(ssl_context=context)
    yield server
    server.close()


@pytest.mark.parametrize("client", ["chatopenai", "fast"])
def test_client_certificate_opens_every_path(
    transport: str, client: str, mtls_fake: FakeServer, files: dict[str, Path]
) -> None:
    before = len(mtls_fake.fake.requests)
    ready, streamed, whole = every_path(
        mtls_fake.url,
        upstream_transport=transport,
        tls_ca_bundle=files["ca"],
        tls_client_cert=files["cert"],
        tls_client_key=files["key"],
        model_client=client,
    )
    assert ready.status_code == 200, ready.text
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["message"]["content"]
    assert len(mtls_fake.fake.requests) == before + 2


def test_a_certificate_file_holding_its_key_needs_no_key_file(
    transport: str, mtls_fake: FakeServer, files: dict[str, Path]
) -> None:
    for resp in every_path(
        mtls_fake.url,
        upstream_transport=transport,
        tls_ca_bundle=files["ca"],
        tls_client_cert=files["both"],
    ):
        assert resp.status_code == 200, resp.text


def test_without_a_client_certificate_the_request_fails_and_says_why(
    transport: str, mtls_fake: FakeServer, files: dict[str, Path]
) -> None:
    before = len(mtls_fake.fake.requests)
    ready, streamed, whole = every_path(
        mtls_fake.url, upstream_transport=transport, tls_ca_bundle=files["ca"]
    )
    assert ready.status_code == 503
    for resp in (streamed, whole):
        assert resp.status_code in (502, 503), resp.text
        message = resp.json()["error"]["message"]
        assert "client certificate" in message and "LLM_TLS_CLIENT_CERT" in message
    assert len(mtls_fake.fake.requests) == before


def test_the_client_certificate_is_shown_through_a_proxy_tunnel(
    transport: str, mtls_fake: FakeServer, files: dict[str, Path], tmp_path: Path
) -> None:
    proxy = ForwardProxy(tmp_path)
    try:
        responses = every_path(
            mtls_fake.url,
            upstream_transport=transport,
            https_proxy=proxy.url,
            tls_ca_bundle=files["ca"],
            tls_client_cert=files["both"],
        )
        for resp in responses:
            assert resp.status_code == 200, resp.text
        assert proxy.wait_for("CONNECT", f"127.0.0.1:{mtls_fake.port}", 2) >= 2
    finally:
        proxy.close()


def test_bad_client_certificate_settings_stop_startup(
    files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        SettingsError, match="LLM_TLS_CLIENT_KEY is set without LLM_TLS_CLIENT_CERT"
    ):
        Settings.load(None, tls_client_key=files["key"])
    with pytest.raises(SettingsError, match="LLM_TLS_CLIENT_CERT"):
        Settings.load(None, tls_client_cert=tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(SettingsError, match="LLM_TLS_CLIENT_CERT: cannot load"):
        Settings.load(None, tls_client_cert=not_pem)
    # A certificate without its key, and no key file: refused now, not at the first request.
    with pytest.raises(SettingsError, match="matching private key"):
        Settings.load(None, tls_client_cert=files["cert"])
    # The key of another certificate.
    other = trustme.CA().issue_cert("other.example")
    wrong_key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(wrong_key))
    with pytest.raises(SettingsError, match="LLM_TLS_CLIENT_CERT / LLM_TLS_CLIENT_KEY"):
        Settings.load(None, tls_client_cert=files["cert"], tls_client_key=wrong_key)
