"""Graceful shutdown of a real ``llm-service serve`` process on SIGTERM.

In-flight streams finish within LLM_DRAIN_TIMEOUT; streams still running then end with an
SSE error event and ``[DONE]``; new connections are refused; the embedded model server is
stopped too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, free_port
from tests.support.sse import content_of, parse_frames

pytestmark = pytest.mark.system


def start_service(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    child_env.update({"LLM_LOG_LEVEL": "INFO", **env})
    log = (tmp_path / "service.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_service", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=child_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "service.log").read_text()
        try:
            if httpx.get(f"{url}/v1/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("service did not start")


@pytest.fixture
def paced_fake() -> Iterator[FakeServer]:
    server = FakeServer(FakeOpenAI())
    yield server
    server.close()


async def open_stream(session: aiohttp.ClientSession, url: str, tag: str) -> aiohttp.ClientResponse:
    body = {"messages": [{"role": "user", "content": tag}], "max_tokens": 500, "stream": True}
    resp = await session.post(f"{url}/v1/chat/completions", json=body)
    assert resp.status == 200
    return resp


async def read_rest(resp: aiohttp.ClientResponse, head: bytes) -> str:
    return (head + await resp.content.read()).decode()


def test_sigterm_drains_then_cuts_streams_with_an_error_event(
    tmp_path: Path, paced_fake: FakeServer
) -> None:
    fake = paced_fake.fake
    # One stream ends 1 s after it starts (inside the 2 s drain), one would take 20 s.
    fake.push(
        Script(tokens=[f" s{i}" for i in range(10)], token_delay=0.1),
        Script(tokens=[f" l{i}" for i in range(200)], token_delay=0.1),
        Script(first_token_delay=20),  # a whole answer the model takes 20 s to give
    )
    proc, url = start_service(
        tmp_path, LLM_MODEL_SERVER_ENDPOINT=paced_fake.url, LLM_MODEL_SERVER="openai",
        LLM_MODEL_NAME="fake-model", LLM_DRAIN_TIMEOUT="2",
    )  # fmt: skip
    try:

        async def whole(session: aiohttp.ClientSession) -> tuple[int, str, dict[str, Any]]:
            body = {"messages": [{"role": "user", "content": "whole"}], "stream": False}
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                return resp.status, resp.headers.get("Retry-After", ""), await resp.json()

        async def scenario() -> tuple[str, str, float, bool, tuple[int, str, dict[str, Any]]]:
            async with aiohttp.ClientSession() as session:
                short = await open_stream(session, url, "short")
                long = await open_stream(session, url, "long")
                heads = [await short.content.readany(), await long.content.readany()]
                waiting = asyncio.create_task(whole(session))
                await asyncio.sleep(0.3)
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                refused = False
                try:  # a new connection after SIGTERM is not accepted
                    async with aiohttp.ClientSession() as other:
                        await other.get(f"{url}/v1/health_check")
                except aiohttp.ClientConnectionError:
                    refused = True
                texts = await asyncio.wait_for(
                    asyncio.gather(read_rest(short, heads[0]), read_rest(long, heads[1])), 10
                )
                took = time.monotonic() - sent
                return texts[0], texts[1], took, refused, await asyncio.wait_for(waiting, 10)

        short_text, long_text, took, refused, (status, retry_after, body) = asyncio.run(scenario())
        assert refused
        # The whole answer still waiting on the model got a 503 at the drain timeout.
        assert (status, retry_after) == (503, "1")
        assert body["error"]["type"] == "service_unavailable"
        # The short stream finished normally during the drain.
        short_frames = parse_frames(short_text)
        assert short_frames[-1].raw == "[DONE]"
        assert short_frames[-2].json()["choices"][0]["finish_reason"] == "stop"
        assert content_of(short_frames) == "".join(f" s{i}" for i in range(10))
        # The long one was cut at the drain timeout: an error event, then [DONE].
        long_frames = parse_frames(long_text)
        assert long_frames[-1].raw == "[DONE]"
        assert long_frames[-2].event == "error"
        error = long_frames[-2].json()["error"]
        assert error["code"] == 503 and error["type"] == "service_unavailable"
        assert "shutting down" in error["message"]
        assert content_of(long_frames).startswith(" l0 l1")
        assert 1.5 < took < 8  # cut at the 2 s drain timeout, not at the stream's 20 s end
        assert_clean_exit(proc, tmp_path)
        deadline = time.monotonic() + 1.0  # the fake notices at its next paced write
        while fake.open_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.open_streams == 0 and fake.streams_finished == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_clean_exit(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """uvicorn shuts down, then re-raises the signal, so the exit status says SIGTERM."""
    assert proc.wait(15) in (0, -signal.SIGTERM)
    log = (tmp_path / "service.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.embedded
def test_sigterm_stops_the_embedded_model_server(tmp_path: Path) -> None:
    proc, url = start_service(tmp_path, LLM_EMBEDDED_N_CTX="512", LLM_DRAIN_TIMEOUT="1")
    try:
        children = children_of(proc.pid)
        assert children, "the embedded llama.cpp server should be a child process"
        assert httpx.get(f"{url}/v1/ready").json()["served_models"] == ["SmolLM2-135M-Instruct"]
        proc.send_signal(signal.SIGTERM)
        assert_clean_exit(proc, tmp_path)
        for child in children:
            assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
