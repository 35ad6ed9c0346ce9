"""Credentials in the model server's URL (``http://user:password@host``): sent as
``Authorization: Basic`` on every path (streams included), unless LLM_VLLM_API_KEY gives a
key (the explicit setting wins); never shown in an error body or a log line, nor the header
they make."""

from __future__ import annotations

import base64
import logging

import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import (
    FakeServer,
    every_path,
    free_port,
)

USER = "alice"
PASSWORD = "pa55-w0rd-in-url"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def with_credentials(url: str) -> str:
    return url.replace("://", f"://{USER}:{PASSWORD}@", 1)


@pytest.mark.parametrize("client", ["fast", "chatopenai"])
def test_url_credentials_are_sent_as_basic_on_every_path(
    transport: str, client: str, fake: FakeOpenAI, fake_server: FakeServer
) -> None:
    for resp in every_path(
        with_credentials(fake_server.url), upstream_transport=transport, model_client=client
    ):
        assert resp.status_code == 200, resp.text
    assert [h.get("Authorization") for h in fake.headers] == [BASIC, BASIC]


@pytest.mark.parametrize("client", ["fast", "chatopenai"])
def test_the_api_key_wins_over_url_credentials(
    transport: str, client: str, fake: FakeOpenAI, fake_server: FakeServer
) -> None:
    responses = every_path(
        with_credentials(fake_server.url),
        upstream_transport=transport,
        vllm_api_key="sk-explicit-key",
        model_client=client,
    )
    for resp in responses:
        assert resp.status_code == 200, resp.text
    assert [h.get("Authorization") for h in fake.headers] == ["Bearer sk-explicit-key"] * 2


def test_failures_show_neither_the_password_nor_the_header(
    transport: str, fake: FakeOpenAI, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A server that echoes what it was sent, as some gateways do ...
    echo = {"error": {"message": f"bad credentials {BASIC} for {with_credentials('http://x')}"}}
    fake.push(Script(status=400, error_body=echo), Script(status=500, error_body=echo))
    _, streamed, whole = every_path(with_credentials(fake_server.url), upstream_transport=transport)
    # ... and one that is not there at all.
    dead = with_credentials(f"http://127.0.0.1:{free_port()}")
    dead_ready, dead_streamed, dead_whole = every_path(dead, upstream_transport=transport)
    assert streamed.status_code >= 400 and whole.status_code >= 400
    assert (dead_ready.status_code, dead_streamed.status_code, dead_whole.status_code) == (
        503,
        503,
        503,
    )
    for resp in (streamed, whole):  # the message itself still comes through
        assert "bad credentials" in resp.json()["error"]["message"]
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert "127.0.0.1" in logs or "unreachable" in logs  # the failures were logged
    encoded = BASIC.removeprefix("Basic ")
    for text in (streamed.text, whole.text, dead_streamed.text, dead_whole.text, logs):
        assert PASSWORD not in text
        assert encoded not in text
