"""The README and the shipped configuration stay true to the code."""

from __future__ import annotations

import httpx
import pytest

from llm_service.settings import Settings
from llm_service.settings_reference import env_name
from tests.support import ROOT
from tests.support.servers import ServiceServer

pytestmark = pytest.mark.system


def env_names() -> list[str]:
    """Each setting's variable: LLM_<FIELD>, or its own name for those read under one
    (HTTP_PROXY)."""
    return [env_name(name) for name in Settings.model_fields]


def test_settings_md_documents_every_setting() -> None:
    reference = (ROOT / "docs" / "settings.md").read_text()
    missing = [name for name in env_names() if f"`{name}`" not in reference]
    assert missing == []


def test_default_env_names_every_setting() -> None:
    text = (ROOT / "configs" / "default.env").read_text()
    missing = [name for name in env_names() if f"{name}=" not in text]
    assert missing == []


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    assert len(readme.encode()) <= 10 * 1024


def test_routes_md_names_every_route(service: ServiceServer) -> None:
    routes = (ROOT / "docs" / "routes.md").read_text()
    schema = httpx.get(f"{service.url}/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"`{method.upper()} {path}`" in routes, (method, path)


def test_openapi_documents_the_request_body(service: ServiceServer) -> None:
    schema = httpx.get(f"{service.url}/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    props = schema["components"]["schemas"][name]["properties"]
    for field in ("messages", "question", "reranked_docs", "max_new_tokens", "stream", "data"):
        assert field in props
    assert "ChatMessage" in schema["components"]["schemas"]
