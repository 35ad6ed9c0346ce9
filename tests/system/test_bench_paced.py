"""The paced benchmark harness: its upstream sends the fake's chunks, its client counts them."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import orjson
import pytest

from bench.loadgen import Config
from bench.paced_load import PacedLoad
from bench.paced_upstream import Answers, serve
from tests.support.servers import free_port

pytestmark = pytest.mark.system


async def _start(tokens: int, delay_s: float) -> tuple[asyncio.Task[None], str]:
    port = free_port()
    answers = Answers("fake-model", [f" tok{i}" for i in range(tokens)], 4096)
    task = asyncio.create_task(serve("127.0.0.1", port, answers, delay_s))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
    return task, url


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_paced_upstream_streams_the_fake_chunks() -> None:
    task, url = await _start(tokens=4, delay_s=0.005)
    try:
        body = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # twice: the connection is kept alive between answers
                resp = await client.post(f"{url}/v1/chat/completions", json=body)
                frames = [line[6:] for line in resp.text.split("\n\n") if line]
                assert resp.headers["content-type"] == "text/event-stream"
                assert frames[-1] == "[DONE]"
                chunks = [orjson.loads(f) for f in frames[:-1]]
                assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
                texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:4]]
                assert texts == [" tok0", " tok1", " tok2"]
                assert chunks[4]["choices"][0]["finish_reason"] == "length"
                assert chunks[5]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3,
                                              "total_tokens": 5}  # fmt: skip
            models = (await client.get(f"{url}/v1/models")).json()
            assert models["data"][0]["max_model_len"] == 4096
            whole = (await client.post(f"{url}/v1/chat/completions",
                                       json={**body, "stream": False})).json()  # fmt: skip
            assert whole["choices"][0]["message"]["content"] == " tok0 tok1 tok2"
    finally:
        await _stop(task)


async def test_paced_load_counts_frames_and_gaps() -> None:
    task, url = await _start(tokens=8, delay_s=0.01)
    try:
        config = Config(url=f"{url}/v1/chat/completions", concurrency=5, duration=1.0,
                        warmup=0.3, stream=True, per_frame_gaps=True, max_tokens=8,
                        drain=5.0)  # fmt: skip
        result = await PacedLoad(config, stall_s=5.0).run()
    finally:
        await _stop(task)
    assert result["errors"] == 0, result["error_kinds"]
    assert result["completed"] > 20  # 5 streams of 8 tokens + finish, ≈ 90 ms each
    # 8 content frames + the finish frame per answer, one every 10 ms per stream
    assert 200 < result["frames_per_s"] < 600  # wide: other work may share the machine
    assert 8 < result["gap_ms"]["p50"] < 30
    assert 8 < result["ttft_ms"]["p50"] < 40
