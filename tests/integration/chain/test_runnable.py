"""The importable chain composes with other LangChain code: ``retriever | format | chain``.

The Runnable methods (invoke, ainvoke, batch, abatch, stream, astream, astream_events,
with_retry, with_fallbacks), against the fake server (exact answers, faults on cue) and
against the embedded llama.cpp server (real answers: structure, not words; marker
``embedded``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from llm_service import Settings, build_chain
from llm_service.errors import UpstreamError
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, free_port

ANSWER = "Deep learning is great."
QUESTIONS = ["What is deep learning?", "What is a neural network?"]


class KeywordRetriever(BaseRetriever):
    """A small in-memory retriever: documents sharing a word with the query, best first."""

    docs: list[Document]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        words = {w for w in query.lower().strip("?").split() if len(w) > 3}
        scored = [(len(words & set(d.page_content.lower().split())), d) for d in self.docs]
        return [d for score, d in sorted(scored, key=lambda x: -x[0]) if score][:3]


CORPUS = [
    Document("deep learning uses neural networks with many layers.",
             metadata={"url": "https://example.com/dl"}),
    Document("a neural network is a graph of weighted connections.",
             metadata={"url": "https://example.com/nn"}),
    Document("bread is baked from flour and water.", metadata={"url": "https://example.com/b"}),
]  # fmt: skip


def to_rag_input(inp: Mapping[str, Any]) -> dict[str, Any]:
    """The format step: retrieved Documents as the chain's reranked docs."""
    docs = [
        {"text": d.page_content, "metadata": {**d.metadata, "citation_id": i}}
        for i, d in enumerate(inp["docs"], 1)
    ]
    return {"question": inp["question"], "reranked_docs": docs}


def rag(chain: Runnable[Mapping[str, Any], BaseMessage]) -> Runnable[str, BaseMessage]:
    retriever = KeywordRetriever(docs=CORPUS)
    return {"docs": retriever, "question": RunnablePassthrough()} | RunnableLambda(
        to_rag_input
    ) | chain  # fmt: skip


def fake_chain(fake_server: FakeServer, **params: Any) -> Runnable[Mapping[str, Any], BaseMessage]:
    settings = Settings(_env_file=None, model_server_endpoint=fake_server.url, model_name="m")
    return build_chain(settings, **params)


@pytest.fixture(scope="module")
def fake_rag_chain(fake_server: FakeServer) -> Runnable[str, BaseMessage]:
    # One chain for the module: its kept-alive connections live as long as the test loop.
    return rag(fake_chain(fake_server, max_tokens=16))


@pytest.fixture
def fake_rag(
    fake_rag_chain: Runnable[str, BaseMessage], fake: FakeOpenAI
) -> Runnable[str, BaseMessage]:
    return fake_rag_chain


@pytest.fixture(scope="module")
def llama_rag(embedded_url: str) -> Runnable[str, BaseMessage]:
    settings = Settings(
        _env_file=None,
        model_server_endpoint=embedded_url,
        model_server="llamacpp",
        model_name="SmolLM2-135M-Instruct",
    )
    return rag(build_chain(settings, max_tokens=8, temperature=0.0))


def sent_docs(fake: FakeOpenAI, i: int = -1) -> str:
    return "\n".join(m["content"] for m in fake.requests[i]["messages"])


# --- against the fake server ---------------------------------------------------------------


def test_invoke_retrieves_formats_and_answers(
    fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI
) -> None:
    out = fake_rag.invoke(QUESTIONS[0])
    assert isinstance(out, AIMessage) and out.text == ANSWER
    prompt = sent_docs(fake)
    assert "[1] (https://example.com/dl)" in prompt and "bread" not in prompt
    assert fake.requests[-1]["max_tokens"] == 16


async def test_ainvoke(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    out = await fake_rag.ainvoke(QUESTIONS[1])
    assert out.text == ANSWER
    assert "[1] (https://example.com/nn)" in sent_docs(fake)


def test_batch(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    outs = fake_rag.batch(QUESTIONS)
    assert [o.text for o in outs] == [ANSWER, ANSWER]
    assert len(fake.requests) == 2


async def test_abatch(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    fake.push(Script(tokens=["x"]), Script(tokens=["y"]))
    outs = await fake_rag.abatch(QUESTIONS)
    assert sorted(o.text for o in outs) == ["x", "y"]


def test_stream(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    chunks = list(fake_rag.stream(QUESTIONS[0]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert [c.text for c in chunks if c.text] == ["Deep", " learning", " is", " great", "."]
    assert chunks[-1].response_metadata.get("finish_reason") == "stop" or any(
        c.response_metadata.get("finish_reason") == "stop" for c in chunks
    )


async def test_astream(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    text = "".join([c.text async for c in fake_rag.astream(QUESTIONS[0])])
    assert text == ANSWER


async def test_astream_events(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    events = [e async for e in fake_rag.astream_events(QUESTIONS[0], version="v2")]
    kinds = {e["event"] for e in events}
    assert {"on_retriever_start", "on_retriever_end", "on_chat_model_end"} <= kinds
    prompt = next(e for e in events if e["event"] == "on_chain_end" and e["name"] == "rag_prompt")
    assert "Content: deep learning uses" in prompt["data"]["output"][0].content
    retrieved = next(e for e in events if e["event"] == "on_retriever_end")["data"]["output"]
    assert [d.metadata["url"] for d in retrieved] == ["https://example.com/dl"]
    tokens = [e["data"]["chunk"].text for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(tokens) == ANSWER


def test_with_retry(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    fake.push(Script(status=500, error_body={"object": "error", "message": "flaky"}))
    retried = fake_rag.with_retry(stop_after_attempt=2, wait_exponential_jitter=False)
    assert retried.invoke(QUESTIONS[0]).text == ANSWER
    assert len(fake.requests) == 2
    fake.push(*[Script(status=500, error_body={"object": "error", "message": "down"})] * 2)
    with pytest.raises(UpstreamError, match="down"):
        retried.invoke(QUESTIONS[0])


async def test_with_fallbacks(fake_rag: Runnable[str, BaseMessage], fake: FakeOpenAI) -> None:
    dead = Settings(_env_file=None, model_server_endpoint=f"http://127.0.0.1:{free_port()}")
    chain = rag(build_chain(dead)).with_fallbacks([fake_rag])
    assert (await chain.ainvoke(QUESTIONS[0])).text == ANSWER
    assert chain.invoke(QUESTIONS[0]).text == ANSWER
    assert len(fake.requests) == 2


# --- against the embedded llama.cpp server -------------------------------------------------


def check_answer(message: BaseMessage) -> None:
    assert isinstance(message, AIMessage) and message.text.strip()
    assert message.response_metadata["finish_reason"] in ("stop", "length")


@pytest.mark.embedded
def test_embedded_invoke_and_batch(llama_rag: Runnable[str, BaseMessage]) -> None:
    check_answer(llama_rag.invoke(QUESTIONS[0]))
    for out in llama_rag.batch(QUESTIONS):
        check_answer(out)


@pytest.mark.embedded
async def test_embedded_ainvoke_and_abatch(llama_rag: Runnable[str, BaseMessage]) -> None:
    check_answer(await llama_rag.ainvoke(QUESTIONS[1]))
    for out in await llama_rag.abatch(QUESTIONS):
        check_answer(out)


@pytest.mark.embedded
def test_embedded_stream(llama_rag: Runnable[str, BaseMessage]) -> None:
    chunks = list(llama_rag.stream(QUESTIONS[0]))
    assert len([c for c in chunks if c.text]) > 1
    assert any(c.response_metadata.get("finish_reason") in ("stop", "length") for c in chunks)


@pytest.mark.embedded
async def test_embedded_astream_events(llama_rag: Runnable[str, BaseMessage]) -> None:
    streamed: list[str] = []
    final: Any = None
    async for event in llama_rag.astream_events(QUESTIONS[0], version="v2"):
        if event["event"] == "on_chat_model_stream":
            streamed.append(event["data"]["chunk"].text)
        elif event["event"] == "on_chat_model_end":
            final = event["data"]["output"]
    assert len(streamed) > 1 and "".join(streamed) == final.text
    astreamed = [c.text async for c in llama_rag.astream(QUESTIONS[0])]
    assert "".join(astreamed).strip()


@pytest.mark.embedded
def test_embedded_retry_and_fallback(llama_rag: Runnable[str, BaseMessage]) -> None:
    dead = Settings(_env_file=None, model_server_endpoint=f"http://127.0.0.1:{free_port()}")
    chain = rag(build_chain(dead)).with_retry(stop_after_attempt=2).with_fallbacks([llama_rag])
    check_answer(chain.invoke(QUESTIONS[0]))


def test_public_api_is_typed_and_documented() -> None:
    from importlib import resources

    import llm_service

    assert resources.files("llm_service").joinpath("py.typed").is_file()
    assert resources.files("llm_service").joinpath("http/static/playground.html").is_file()
    for name in llm_service.__all__:
        obj = getattr(llm_service, name)
        assert name == "__version__" or (obj.__doc__ or "").strip(), name
    assert "with_fallbacks" in (build_chain.__doc__ or "")
