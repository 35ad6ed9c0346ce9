"""The README and the shipped configuration stay true to the code."""

from __future__ import annotations

import httpx
import pytest

from llm_service.settings import Settings
from tests.support import ROOT
from tests.support.servers import ServiceServer

pytestmark = pytest.mark.system


def env_names() -> list[str]:
    return [f"LLM_{name.upper()}" for name in Settings.model_fields]


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in env_names() if f"`{name}`" not in readme]
    assert missing == []


def test_default_env_names_every_setting() -> None:
    text = (ROOT / "configs" / "default.env").read_text()
    missing = [name for name in env_names() if f"{name}=" not in text]
    assert missing == []


def test_readme_names_the_two_commands_and_every_route(service: ServiceServer) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    schema = httpx.get(f"{service.url}/openapi.json").json()
    for path in schema["paths"]:
        assert f"`{next(iter(schema['paths'][path])).upper()} {path}`" in readme, path


def test_openapi_documents_the_request_body(service: ServiceServer) -> None:
    schema = httpx.get(f"{service.url}/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    props = schema["components"]["schemas"][name]["properties"]
    for field in ("messages", "question", "reranked_docs", "max_new_tokens", "stream", "data"):
        assert field in props
    assert "ChatMessage" in schema["components"]["schemas"]
