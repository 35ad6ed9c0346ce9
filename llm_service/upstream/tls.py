"""TLS towards the model server and the token endpoint, set up once for every client."""

from __future__ import annotations

import ssl
from pathlib import Path

from llm_service.settings import Settings


def client_ssl_context(*, skip_verify: bool, ca_bundle: str | Path | None) -> ssl.SSLContext:
    """The context every upstream connection uses (aiohttp and the streaming transport alike,
    so both trust the same servers): the system CAs, or ``ca_bundle``'s, or none at all."""
    if skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle is not None else None)


def verify_for(settings: Settings) -> bool | str:
    """The same choice in httpx's form, for the openai SDK behind ChatOpenAI / VLLMOpenAI."""
    if settings.tls_skip_verify:
        return False
    return str(settings.tls_ca_bundle) if settings.tls_ca_bundle is not None else True
