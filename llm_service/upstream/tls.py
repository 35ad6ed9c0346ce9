"""TLS towards the model server and the token endpoint, set up once for every client."""

from __future__ import annotations

import ssl
from pathlib import Path

from llm_service.settings import Settings


def client_ssl_context(
    *,
    skip_verify: bool,
    ca_bundle: str | Path | None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> ssl.SSLContext:
    """The context every upstream connection uses (aiohttp, the streaming transport and the
    httpx clients of ChatOpenAI alike, so all trust the same servers and show the same
    certificate): the system CAs, or ``ca_bundle``'s, or none at all; with ``client_cert``
    (and ``client_key`` when the certificate's file does not hold the key), the client
    certificate a server that asks for one (mutual TLS) gets."""
    if skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(
            cafile=str(ca_bundle) if ca_bundle is not None else None
        )
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    return context


def ssl_context_for(settings: Settings) -> ssl.SSLContext:
    """``client_ssl_context`` configured by ``settings`` (LLM_TLS_*)."""
    return client_ssl_context(
        skip_verify=settings.tls_skip_verify,
        ca_bundle=settings.tls_ca_bundle,
        client_cert=settings.tls_client_cert,
        client_key=settings.tls_client_key,
    )
