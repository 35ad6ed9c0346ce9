"""Inbound auth (LLM_API_KEYS): bearer keys for callers, 401 without detail, health open."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from llm_service.settings import Settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import FakeServer, ServiceServer, settings_for

KEYS = "key-alpha, key-beta-longer,"
BODY = {"messages": [{"role": "user", "content": "Hi"}], "stream": False}


@pytest.fixture(scope="module")
def guarded(fake_server: FakeServer) -> Iterator[ServiceServer]:
    server = ServiceServer(settings_for(fake_server.url, api_keys=KEYS))
    yield server
    server.close()


def test_keys_are_parsed_from_a_comma_separated_secret() -> None:
    settings = Settings(_env_file=None, api_keys=KEYS)
    assert settings.inbound_keys == ["key-alpha", "key-beta-longer"]
    assert "key-alpha" not in repr(settings)  # a SecretStr: not in logs or reprs
    assert Settings(_env_file=None).inbound_keys == []


@pytest.mark.parametrize("key", ["key-alpha", "key-beta-longer"])
def test_each_key_is_accepted(guarded: ServiceServer, fake: FakeOpenAI, key: str) -> None:
    resp = httpx.post(
        f"{guarded.url}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 200
    assert resp.json()["text"] == "Deep learning is great."
    # The caller's key is not passed on to the model server.
    assert key not in str(fake.headers[-1])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer key-alph"},  # a prefix of a key
        {"Authorization": "Bearer key-alpha-and-more"},
        {"Authorization": "Basic key-alpha"},
        {"Authorization": "key-alpha"},
        {"Authorization": "Bearer key-alpha,key-beta-longer"},
        {"X-Api-Key": "key-alpha"},
    ],
)
def test_missing_or_wrong_key_is_401_without_detail(
    guarded: ServiceServer, fake: FakeOpenAI, headers: dict[str, str]
) -> None:
    resp = httpx.post(f"{guarded.url}/v1/chat/completions", json=BODY, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    # One fixed answer whatever was wrong: no hint of which keys exist or what matched.
    assert resp.json() == {
        "error": {
            "message": "a valid API key is required: send 'Authorization: Bearer <key>'",
            "type": "authentication_error",
            "param": None,
            "code": 401,
        }
    }
    assert fake.requests == []


def test_every_route_but_health_needs_a_key(guarded: ServiceServer) -> None:
    assert httpx.get(f"{guarded.url}/v1/health_check").status_code == 200
    assert httpx.get(f"{guarded.url}/v1/ready").status_code == 200
    for path in ("/openapi.json", "/docs", "/nope"):
        assert httpx.get(f"{guarded.url}{path}").status_code == 401, path
    ok = httpx.get(f"{guarded.url}/openapi.json", headers={"Authorization": "Bearer key-alpha"})
    assert ok.status_code == 200


def test_openai_sdk_with_and_without_the_key(guarded: ServiceServer, fake: FakeOpenAI) -> None:
    good = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="key-beta-longer")
    stream = good.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Deep learning is great."
    bad = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="valid API key"):
        bad.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}])


def test_no_keys_means_open(service: ServiceServer, fake: FakeOpenAI) -> None:
    assert httpx.post(f"{service.url}/v1/chat/completions", json=BODY).status_code == 200
