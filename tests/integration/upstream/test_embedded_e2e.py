"""End to end against the real embedded llama.cpp server (SmolLM2-135M-Instruct).

The model is tiny: these tests assert structure, non-emptiness, stop reasons and token
counts, never its exact words.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk

from llm_service import build_chain
from llm_service.settings import Settings
from tests.support.seed import DOCS, seed_request
from tests.support.servers import ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames

pytestmark = pytest.mark.embedded


def post(service: ServiceServer, body: Any) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=120)


def test_seed_curl_non_stream(llama_service: ServiceServer) -> None:
    resp = post(llama_service, seed_request(False))
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["text"].strip()
    assert doc["stream"] is False
    assert doc["prompt"] == "### Question: What is Deep Learning? \n\n"
    assert doc["choices"][0]["finish_reason"] in ("stop", "length")
    usage = doc["usage"]
    assert 0 < usage["completion_tokens"] <= 32
    assert usage["prompt_tokens"] > 20


def test_seed_curl_stream_with_trailer(llama_service: ServiceServer) -> None:
    metadata = {"url": "https://example.com", "citation_id": 1}
    doc = {"text": "Deep learning is...", "metadata": metadata}
    resp = post(llama_service, seed_request(True, max_new_tokens=8, data={"reranked_docs": [doc]}))
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert content_of(frames).strip()
    assert frames[-2].raw == "[DONE]"
    assert frames[-1].json() == {  # converted as the reference does
        "reranked_docs": [{"text": "Deep learning is...", "vector_distance": 1.0,
                           "reranker_score": 0.0, "citation_id": 1, "type": "link",
                           "url": "https://example.com"}]
    }  # fmt: skip
    last = frames[-3].json()
    assert last["object"] == "chat.completion.chunk"
    assert last["choices"][0]["finish_reason"] == "length"  # 8 tokens is never enough here
    content_chunks = [f for f in frames[:-3] if f.json()["choices"][0]["delta"].get("content")]
    assert 1 <= len(content_chunks) <= 8


def test_question_and_docs_form(llama_service: ServiceServer) -> None:
    body = {"question": "What is deep learning?", "reranked_docs": DOCS, "max_new_tokens": 16,
            "stream": False}  # fmt: skip
    doc = post(llama_service, body).json()
    assert doc["text"].strip()
    assert doc["prompt"] == "What is deep learning?"
    assert [d["citation_id"] for d in doc["data"]["reranked_docs"]] == [1, 2]
    # The prompt holds both documents: llama.cpp counted them.
    short = post(llama_service, {**body, "reranked_docs": []}).json()
    assert doc["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 20


def test_openai_sdk_stream_and_whole(llama_service: ServiceServer) -> None:
    client = openai.OpenAI(base_url=f"{llama_service.url}/v1", api_key="unused")
    messages: Any = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=5)
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(model="m", messages=messages, max_tokens=5, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_importable_chain_invoke_and_astream(embedded_url: str) -> None:
    settings = Settings(_env_file=None, model_server_endpoint=embedded_url, model_server="llamacpp")
    chain = build_chain(settings, max_tokens=6, temperature=0.0)
    message = chain.invoke({"question": "What is deep learning?", "reranked_docs": DOCS})
    assert isinstance(message, AIMessage)
    assert message.text.strip()
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert message.usage_metadata is not None
    assert 0 < message.usage_metadata["output_tokens"] <= 6

    async def collect() -> list[AIMessageChunk]:
        stream = chain.astream({"messages": [{"role": "user", "content": "Hi"}]})
        return [c async for c in stream if isinstance(c, AIMessageChunk)]

    chunks = asyncio.run(collect())
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.text.strip()
    assert total.response_metadata["finish_reason"] in ("stop", "length")
    # llama-cpp-python's server reports no usage when streaming; one chunk per token.
    assert 1 <= len([c for c in chunks if c.text]) <= 6

    streamed = list(chain.stream({"messages": [{"role": "user", "content": "Hi"}]}))
    assert len(streamed) > 1 and "".join(c.text for c in streamed).strip()


def test_chatopenai_model_step(embedded_url: str) -> None:
    server = ServiceServer(
        settings_for(embedded_url, model_server="llamacpp", model_client="chatopenai")
    )
    try:
        frames = parse_frames(post(server, seed_request(True, max_new_tokens=6)).text)
        assert content_of(frames).strip()
        assert frames[-1].raw == "[DONE]"
        assert frames[-2].json()["choices"][0]["finish_reason"] == "length"
        doc = post(server, seed_request(False, max_new_tokens=6)).json()
        assert doc["text"].strip() and doc["usage"]["completion_tokens"] <= 6
    finally:
        server.close()


def test_service_starts_and_stops_embedded_server() -> None:
    server = ServiceServer(Settings(_env_file=None, model_server_endpoint=None))
    try:
        embedded = server.app.state.embedded
        assert embedded is not None
        ready = httpx.get(f"{server.url}/v1/ready").json()
        assert ready["status"] == "ready" and ready["served_models"]
        assert httpx.get(f"{server.url}/v1/health_check").json() == {"status": "ok"}
        doc = post(server, seed_request(False, max_new_tokens=4)).json()
        assert doc["text"].strip()
        # Metrics report the child and the tokens the real server counted.
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'llm_embedded_server_state{state="running"} 1.0' in metrics
        assert f"llm_prompt_tokens_total {float(doc['usage']['prompt_tokens'])}" in metrics
        assert f"llm_completion_tokens_total {float(doc['usage']['completion_tokens'])}" in metrics
        url = embedded.url
    finally:
        server.close()
    # The child process is gone with the service.
    try:
        httpx.get(f"{url}/v1/models", timeout=2)
        raise AssertionError("embedded server still answers after shutdown")
    except httpx.TransportError:
        pass


def test_overflowing_docs_are_dropped_not_refused() -> None:
    """A real context overflow: llama.cpp with n_ctx=512 refuses the whole prompt, the
    service drops the lowest-ranked documents and answers 200."""
    server = ServiceServer(Settings(_env_file=None, model_server_endpoint=None, embedded_n_ctx=512))
    try:
        docs = [
            {"text": f"Fact {i}: " + "deep learning stacks many neural network layers. " * 12,
             "metadata": {"url": f"https://example.com/{i}", "citation_id": i + 1}}
            for i in range(12)
        ]  # fmt: skip
        body = {"question": "What is deep learning?", "reranked_docs": docs,
                "max_new_tokens": 32, "stream": False}  # fmt: skip
        resp = post(server, body)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        context = doc["data"]["context"]
        assert context["counted_by"] == "server" and context["max_model_len"] == 512
        assert context["docs_dropped"] > 0 and context["docs_used"] >= 1
        assert doc["usage"]["prompt_tokens"] <= 512 - 32
        assert doc["text"].strip()
        # The same prompt with every document overflows the real server.
        everything = "\n\n".join(str(d["text"]) for d in docs)
        full = httpx.post(
            f"{server.app.state.embedded.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": everything}], "max_tokens": 32},
            timeout=60,
        )
        assert full.status_code >= 400
        # Streaming answers carry the same report in the trailer.
        frames = parse_frames(post(server, {**body, "stream": True}).text)
        assert frames[-1].json()["context"]["docs_dropped"] == context["docs_dropped"]
        metrics = httpx.get(f"{server.url}/metrics").text
        assert f"llm_documents_dropped_total {2.0 * context['docs_dropped']}" in metrics
    finally:
        server.close()
