"""``RagChain`` keeps every Runnable behaviour of ``prompt | model`` while streaming leaner."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableLambda

from llm_service import build_chain
from llm_service.chain import RagChain
from llm_service.settings import Settings
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer

QUESTION = {
    "question": "What is deep learning?",
    "reranked_docs": [{"text": "DL uses neural networks.", "metadata": {"url": "https://a/1"}}],
}


def chain_for(server: FakeServer, **params: Any) -> RagChain:
    settings = Settings(_env_file=None, model_server_endpoint=server.url, model_name="m")
    chain = build_chain(settings, **params)
    assert isinstance(chain, RagChain)
    return chain


class Recorder(BaseCallbackHandler):
    """Records run starts/ends with their parents, as a tracer sees them."""

    run_inline = True  # called in order on the loop by async callback managers too

    def __init__(self) -> None:
        self.events: list[tuple[str, str, UUID | None]] = []
        self.tokens = 0
        self.chain_outputs: list[Any] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kw: Any) -> None:
        self.events.append(("chain_start", kw.get("name") or "", kw.get("parent_run_id")))

    def on_chain_end(self, outputs: Any, **kw: Any) -> None:
        self.events.append(("chain_end", "", kw.get("parent_run_id")))
        self.chain_outputs.append(outputs)

    def on_chat_model_start(self, serialized: Any, messages: Any, **kw: Any) -> None:
        self.events.append(("chat_model_start", "", kw.get("parent_run_id")))

    def on_llm_new_token(self, token: Any, **kw: Any) -> None:
        self.tokens += 1

    def on_llm_end(self, response: Any, **kw: Any) -> None:
        self.events.append(("llm_end", "", kw.get("parent_run_id")))


def test_astream_yields_every_chunk_with_finish_reason_and_usage(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    fake.push(Script(tokens=["a", "b", "c"], finish_reason="length"))
    chunks = asyncio.run(_collect(chain_for(fake_server), QUESTION))
    assert "".join(str(c.content) for c in chunks) == "abc"
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    finishes = [c.response_metadata.get("finish_reason") for c in chunks]
    assert finishes.count("length") == 1
    assert any(c.usage_metadata for c in chunks)  # type: ignore[attr-defined]
    # the prompt step really ran: the upstream got the template with the document
    sent = fake.requests[-1]["messages"]
    assert "DL uses neural networks." in "".join(m["content"] for m in sent)


async def _collect(chain: RagChain, inp: Any, config: Any = None) -> list[BaseMessage]:
    return [chunk async for chunk in chain.astream(inp, config)]


def test_callbacks_see_one_chain_run_with_prompt_and_model_children(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    for stream in (False, True):
        recorder = Recorder()
        chain = chain_for(fake_server)
        config: Any = {"callbacks": [recorder]}
        if stream:
            asyncio.run(_collect(chain, QUESTION, config))
        else:
            asyncio.run(chain.ainvoke(QUESTION, config))
        names = [name for kind, name, _ in recorder.events if kind == "chain_start"]
        assert names[0] == "llm_service"
        assert "rag_prompt" in names
        root_children = [e for e in recorder.events if e[2] is not None]
        assert {kind for kind, _, _ in root_children} >= {"chain_start", "chat_model_start"}
        assert recorder.events[-1][0] == "chain_end"  # the root run ends last
        if stream:
            assert recorder.tokens >= 5  # on_llm_new_token per chunk
        final = recorder.chain_outputs[-1]
        assert "Deep learning is great." in str(getattr(final, "content", final))


def test_sync_stream_and_invoke_report_to_sync_callbacks(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    recorder = Recorder()
    chain = chain_for(fake_server)
    text = "".join(str(c.content) for c in chain.stream(QUESTION, {"callbacks": [recorder]}))
    assert text == "Deep learning is great."
    assert recorder.events[0] == ("chain_start", "llm_service", None)
    assert recorder.events[-1][0] == "chain_end"
    assert chain.invoke(QUESTION).text == text
    assert [m.text for m in chain.batch([QUESTION, QUESTION])] == [text, text]


def test_astream_events_reports_the_chain_and_model_streams(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    async def events() -> list[dict[str, Any]]:
        chain = chain_for(fake_server)
        return [dict(e) async for e in chain.astream_events(QUESTION, version="v2")]

    seen = asyncio.run(events())
    kinds = [(e["event"], e["name"]) for e in seen]
    assert kinds[0] == ("on_chain_start", "llm_service")
    assert kinds[-1] == ("on_chain_end", "llm_service")
    chain_stream = [
        e for e in seen if e["event"] == "on_chain_stream" and e["name"] == "llm_service"
    ]
    model_stream = [e for e in seen if e["event"] == "on_chat_model_stream"]
    text = "".join(str(e["data"]["chunk"].content) for e in chain_stream)
    assert text == "Deep learning is great."
    assert len(model_stream) >= len(chain_stream) >= 5
    assert ("on_chain_start", "rag_prompt") in kinds


def test_stopping_the_stream_closes_the_upstream_at_once(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    fake.push(Script(tokens=[f"t{i} " for i in range(200)], token_delay=0.02))

    async def first_two() -> None:
        stream = chain_for(fake_server).astream(QUESTION)
        seen = 0
        async for chunk in stream:
            seen += bool(chunk.content)
            if seen == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(first_two())
    deadline = time.monotonic() + 1.0
    while fake.streams_cut < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.streams_cut == 1 and fake.open_streams == 0


def test_with_retry_and_with_fallbacks_compose(fake_server: FakeServer, fake: FakeOpenAI) -> None:
    fake.push(Script(status=500, error_body={"object": "error", "message": "boom"}))
    retried = chain_for(fake_server).with_retry(stop_after_attempt=2, wait_exponential_jitter=False)
    assert retried.invoke(QUESTION).text == "Deep learning is great."
    assert len(fake.requests) == 2

    fake.push(Script(status=503))
    backup: RunnableLambda[Any, BaseMessage] = RunnableLambda(
        lambda _: AIMessageChunk(content="fallback")
    )
    assert chain_for(fake_server).with_fallbacks([backup]).invoke(QUESTION).text == "fallback"


def test_schemas_are_those_of_the_prompt_and_model_steps(fake_server: FakeServer) -> None:
    chain = chain_for(fake_server, temperature=0.0)
    assert chain.get_input_schema() is not None
    assert chain.get_output_schema().model_json_schema()  # the chat model's output
    graph = chain.get_graph()
    assert len(graph.nodes) >= 4  # input, prompt, model, output
    question: RunnableLambda[str, dict[str, Any]] = RunnableLambda(lambda q: {"question": q})
    piped = question | chain
    assert piped.invoke("What is deep learning?").text == "Deep learning is great."
