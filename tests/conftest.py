"""Shared real servers: the fake OpenAI server, the embedded llama.cpp server, the service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llm_service.upstream.embedded import EmbeddedServer
from tests.fake_openai import FakeOpenAI
from tests.servers import FakeServer, LoopThread, ServiceServer, settings_for


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def fake(fake_server: FakeServer) -> FakeOpenAI:
    """The fake model server, with no queued scripts and no recorded requests."""
    fake_server.fake.reset()
    return fake_server.fake


@pytest.fixture(scope="session")
def service(fake_server: FakeServer) -> Iterator[ServiceServer]:
    """The service in front of the fake model server."""
    server = ServiceServer(settings_for(fake_server.url, request_timeout=1.0))
    yield server
    server.close()


@pytest.fixture(scope="session")
def embedded_url() -> Iterator[str]:
    """The embedded llama.cpp server with the SmolLM2 model shipped in its wheel."""
    loop = LoopThread("embedded")
    server = EmbeddedServer(None, alias="SmolLM2-135M-Instruct", n_ctx=2048)
    url = loop.run(server.start())
    yield url
    loop.run(server.stop())
    loop.close()


@pytest.fixture(scope="session")
def llama_service(embedded_url: str) -> Iterator[ServiceServer]:
    """The service in front of the real llama.cpp server."""
    server = ServiceServer(
        settings_for(embedded_url, model_server="llamacpp", model_name="SmolLM2-135M-Instruct")
    )
    yield server
    server.close()
