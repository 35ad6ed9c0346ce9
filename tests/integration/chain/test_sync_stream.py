"""The sync ``stream`` stopped early stops the model server too, as ``astream`` does.

The sync API streams on a private loop in a worker thread; a consumer that breaks off after
the first chunk (or drops the iterator) must close the upstream connection at once, or the
model server generates the rest of the answer for nobody. The fake server paces its tokens
(40 of them, 0.1 s apart) and records a stream cut short by the client.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator

import pytest
from langchain_core.messages import BaseMessage

from llm_service import Settings, build_chain
from llm_service.chain.upstream_model import UpstreamChatModel
from llm_service.context import request_id
from llm_service.upstream.client import UpstreamClient
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer

TOKENS = [f" w{i}" for i in range(40)]
SLOW = Script(tokens=TOKENS, token_delay=0.1)  # 4 s to the end


def cut_soon(fake: FakeOpenAI, began: float) -> float:
    """Seconds from ``began`` until the fake saw its stream cut (fails after 2.5 s)."""
    deadline = time.monotonic() + 2.5
    while fake.streams_cut == 0:
        assert time.monotonic() < deadline, "the model server kept generating"
        time.sleep(0.02)
    return time.monotonic() - began


@pytest.fixture
def model(fake_server: FakeServer) -> UpstreamChatModel:
    return UpstreamChatModel(client=UpstreamClient(fake_server.url), model_name="m")


@pytest.fixture
def rag_chain(fake_server: FakeServer) -> Callable[[], Iterator[BaseMessage]]:
    settings = Settings(_env_file=None, model_server_endpoint=fake_server.url, model_name="m")
    chain = build_chain(settings)
    rag_input = {
        "question": "What is deep learning?",
        "reranked_docs": [{"text": "It uses neural networks.",
                           "metadata": {"url": "https://example.com/dl", "citation_id": 1}}],
    }  # fmt: skip
    return lambda: chain.stream(rag_input)


def test_model_stream_broken_off_closes_the_upstream_stream(
    model: UpstreamChatModel, fake: FakeOpenAI
) -> None:
    fake.push(SLOW)
    began = time.monotonic()
    for chunk in model.stream("Hi"):
        assert chunk is not None
        break
    assert cut_soon(fake, began) < 2.5
    assert fake.streams_started == 1 and fake.streams_finished == 0


def test_model_stream_dropped_unfinished_closes_the_upstream_stream(
    model: UpstreamChatModel, fake: FakeOpenAI
) -> None:
    fake.push(SLOW)
    began = time.monotonic()
    chunks = model.stream("Hi")
    next(chunks)
    del chunks  # garbage: the generator is closed when collected
    gc.collect()
    cut_soon(fake, began)
    assert fake.streams_finished == 0


def test_model_stream_read_to_the_end_is_whole(model: UpstreamChatModel, fake: FakeOpenAI) -> None:
    fake.push(Script(tokens=TOKENS[:5], token_delay=0.01))
    text = "".join(str(c.content) for c in model.stream("Hi"))
    assert text == "".join(TOKENS[:5])
    assert fake.streams_finished == 1 and fake.streams_cut == 0


def test_model_stream_failure_is_raised_in_the_callers_thread(
    model: UpstreamChatModel, fake: FakeOpenAI
) -> None:
    fake.push(Script(tokens=TOKENS[:5], error_chunk_after=2))
    with pytest.raises(Exception, match="fake mid-stream failure"):
        for _ in model.stream("Hi"):
            pass


def test_rag_chain_stream_broken_off_closes_the_upstream_stream(
    rag_chain: Callable[[], Iterator[BaseMessage]], fake: FakeOpenAI
) -> None:
    fake.push(SLOW)
    began = time.monotonic()
    for chunk in rag_chain():
        assert chunk is not None
        break
    assert cut_soon(fake, began) < 2.5
    assert fake.streams_started == 1 and fake.streams_finished == 0
    assert "What is deep learning?" in fake.requests[-1]["messages"][-1]["content"]


def test_model_stream_runs_in_the_callers_context(
    model: UpstreamChatModel, fake: FakeOpenAI
) -> None:
    """The worker thread streams in a copy of the caller's context: the request id reaches
    the model server (and the log lines) as it does from ``astream``."""
    token = request_id.set("sync-caller-1")
    try:
        assert "".join(str(c.content) for c in model.stream("Hi"))
    finally:
        request_id.reset(token)
    assert fake.headers[-1].get("X-Request-ID") == "sync-caller-1"
