"""The chat route against the scriptable fake model server: wire format, modes and faults."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.seed import DOCS, SEED_SYSTEM, seed_request
from tests.support.servers import FakeServer, ServiceServer, free_port, settings_for
from tests.support.sse import content_of, parse_frames


def post(service: ServiceServer, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30, **kw)


# --- streaming wire format ---------------------------------------------------------------


def test_stream_is_openai_chunks_then_done(service: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(service, seed_request(True))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]"
    chunks = [f.json() for f in frames[:-1]]
    assert len(chunks) == 7  # the role, 5 tokens (upstream's role chunk merged in), finish
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for chunk in chunks:
        assert set(chunk) == {"id", "object", "created", "model", "choices"}
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "fake-model"
        assert chunk["id"] == chunks[0]["id"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {"content": ""}
    assert content_of(frames) == "Deep learning is great."


def test_stream_sends_seed_params_upstream(service: ServiceServer, fake: FakeOpenAI) -> None:
    post(service, seed_request(True))
    sent = fake.requests[-1]
    assert sent["max_tokens"] == 32
    assert sent["top_p"] == 0.95 and sent["temperature"] == 0.01
    assert sent["stream"] is True
    assert sent["messages"][0] == {"role": "system", "content": SEED_SYSTEM}


def test_seed_knobs_the_server_lacks_are_left_out(service: ServiceServer, fake: FakeOpenAI) -> None:
    # The fake plays an "openai" server, which has none of the seed's extra knobs. OPEA
    # pipelines send them with every request and the seed sent them nowhere: answered,
    # and the server is sent none of them (docs/capabilities.md).
    resp = post(service, seed_request(True, top_k=10, repetition_penalty=1.03, typical_p=0.9))
    assert resp.status_code == 200
    sent = fake.requests[-1]
    assert not {"top_k", "repetition_penalty", "typical_p", "repeat_penalty"} & set(sent)


def test_stream_finish_reason_length(service: ServiceServer, fake: FakeOpenAI) -> None:
    frames = parse_frames(post(service, seed_request(True, max_new_tokens=2)).text)
    assert frames[-2].json()["choices"][0]["finish_reason"] == "length"
    assert content_of(frames) == "Deep learning"


def test_stream_data_trailer_after_done(service: ServiceServer, fake: FakeOpenAI) -> None:
    # data.reranked_docs come as TextDocs and leave converted, as the reference does
    # (the conversion in full: test_opea_contract.py).
    metadata = {"url": "https://example.com", "citation_id": 1, "vector_distance": 0.23,
                "reranker_score": 0.83}  # fmt: skip
    data = {"reranked_docs": [{"text": "Deep learning is...", "metadata": metadata}]}
    frames = parse_frames(post(service, seed_request(True, data=data)).text)
    assert frames[-2].raw == "[DONE]"
    assert frames[-1].field == "json"
    assert frames[-1].json() == {
        "reranked_docs": [{"text": "Deep learning is...", **metadata, "type": "link"}]
    }


def test_stream_usage_when_asked(service: ServiceServer, fake: FakeOpenAI) -> None:
    body = seed_request(True, stream_options={"include_usage": True})
    frames = parse_frames(post(service, body).text)
    usage_chunk = frames[-2].json()
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 5


def test_stream_coalesced_upstream_chunks_keep_order(
    service: ServiceServer, fake: FakeOpenAI
) -> None:
    tokens = [f" t{i}" for i in range(50)]
    fake.push(Script(tokens=tokens, tokens_per_write=7))
    frames = parse_frames(post(service, seed_request(True, max_new_tokens=100)).text)
    assert content_of(frames) == "".join(tokens)
    assert len(frames) == 1 + 50 + 2  # the role, the tokens, the finish, [DONE]


def test_question_and_docs_build_prompt(service: ServiceServer, fake: FakeOpenAI) -> None:
    body = {"question": "What is deep learning?", "reranked_docs": DOCS,
            "history": [{"question": "Hi", "answer": "Hello!"}], "stream": True}  # fmt: skip
    frames = parse_frames(post(service, body).text)
    system, user = fake.requests[-1]["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert (
        "[1] (https://example.com/dl)\nSection: AI > DL\nContent: Deep learning uses"
        in (system["content"])
    )
    assert "[2] (docs/a.pdf)" in system["content"]
    assert "User: Hi\nAssistant: Hello!" in system["content"]
    assert "### Question: What is deep learning?" in user["content"]
    trailer = frames[-1].json()
    assert trailer["citations"] == []  # the fake's answer cites nothing
    assert trailer["context"]["docs_used"] == 2 and trailer["context"]["docs_dropped"] == 0
    assert trailer["reranked_docs"] == [  # the reference's shape, as in the seed form
        {"text": "Deep learning uses neural networks.", "vector_distance": 0.23,
         "reranker_score": 0.83, "citation_id": 1, "type": "link",
         "url": "https://example.com/dl"},
        {"text": "Stored file text.", "vector_distance": 1.0, "reranker_score": 0.5,
         "citation_id": 2, "type": "file", "bucket_name": "docs", "object_name": "a.pdf"},
    ]  # fmt: skip


# --- whole answers -------------------------------------------------------------------------


def test_non_stream_generated_doc(service: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(service, seed_request(False, data={"reranked_docs": []}))
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["text"] == "Deep learning is great."
    assert doc["prompt"] == "### Question: What is Deep Learning? \n\n"
    assert doc["stream"] is False
    assert doc["output_guardrail_params"] is None
    assert doc["data"] == {"reranked_docs": []}
    assert len(doc["id"]) == 32
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": doc["text"]}
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"]["completion_tokens"] == 5
    assert fake.requests[-1]["stream"] is False


def test_openai_sdk_against_our_route(service: ServiceServer, fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused")
    whole = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert whole.choices[0].message.content == "Deep learning is"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Deep learning is great."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_disable_streaming_forces_whole_answers(fake_server: FakeServer, fake: FakeOpenAI) -> None:
    server = ServiceServer(settings_for(fake_server.url, disable_streaming=True))
    try:
        resp = post(server, seed_request(True))
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["text"] == "Deep learning is great."
        assert fake.requests[-1]["stream"] is False
    finally:
        server.close()


def test_output_guard_gets_generated_doc(fake_server: FakeServer, fake: FakeOpenAI) -> None:
    server = ServiceServer(settings_for(fake_server.url, output_guard_exists=True))
    try:
        params = {"ban_substrings": {"enabled": True}}
        resp = post(server, seed_request(True, output_guardrail_params=params, data={"a": 1}))
        doc = resp.json()
        assert doc["text"] == "Deep learning is great."
        assert doc["stream"] is True  # the guard streams it on
        assert doc["output_guardrail_params"] == params
        assert doc["data"] == {"reranked_docs": []}  # only these, as the reference
    finally:
        server.close()


# --- model-server faults -----------------------------------------------------------------


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == resp.status_code
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True])
def test_refused_connection_is_503(stream: bool) -> None:
    server = ServiceServer(settings_for(f"http://127.0.0.1:{free_port()}"))
    try:
        resp = post(server, seed_request(stream))
        assert resp.status_code == 503
        assert "unreachable" in error_of(resp)["message"]
    finally:
        server.close()


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_500_is_502(service: ServiceServer, fake: FakeOpenAI, stream: bool) -> None:
    fake.push(Script(status=500))
    resp = post(service, seed_request(stream))
    assert resp.status_code == 502
    assert "fake error 500" in error_of(resp)["message"]


def test_upstream_429_is_503_with_retry_after(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(status=429, headers={"Retry-After": "7"}))
    resp = post(service, seed_request(True))
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "7"
    assert error_of(resp)["type"] == "upstream_unavailable"


def test_tgi_error_shape_is_relayed(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(status=422, error_body={"error": "Input validation error", "error_type":
                                             "validation"}))  # fmt: skip
    resp = post(service, seed_request(False))
    assert resp.status_code == 502
    assert "Input validation error" in error_of(resp)["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_slow_first_token_is_504(service: ServiceServer, fake: FakeOpenAI, stream: bool) -> None:
    fake.push(Script(first_token_delay=1.5))  # the service's request_timeout is 1 s
    resp = post(service, seed_request(stream))
    assert resp.status_code == 504
    assert error_of(resp)["type"] == "upstream_timeout"


@pytest.mark.parametrize(
    "script",
    [
        Script(die_after=2),
        Script(error_chunk_after=2),
        Script(malformed_after=2),
        Script(send_done=False, finish_reason=""),
    ],
    ids=["dies-midway", "vllm-error-chunk", "malformed-chunk", "no-done"],
)
def test_mid_stream_failure_is_error_event_then_done(
    service: ServiceServer, fake: FakeOpenAI, script: Script
) -> None:
    fake.push(script)
    resp = post(service, seed_request(True, data={"x": 1}))
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]"
    error = frames[-2]
    assert error.event == "error"
    assert error.json()["error"]["code"] == 502
    assert all(f.field != "json" for f in frames)  # no trailer after a failure
    if script.die_after or script.error_chunk_after or script.malformed_after:
        assert content_of(frames) == "Deep learning"


def test_stream_without_done_but_finished_is_complete(
    service: ServiceServer, fake: FakeOpenAI
) -> None:
    fake.push(Script(send_done=False))
    frames = parse_frames(post(service, seed_request(True)).text)
    assert frames[-1].raw == "[DONE]"
    assert frames[-2].json()["choices"][0]["finish_reason"] == "stop"


def test_openai_sdk_raises_on_mid_stream_error(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(die_after=1))
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="stream"):
        list(stream)


def test_client_disconnect_closes_upstream(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(tokens=[f" t{i}" for i in range(200)], token_delay=0.02))
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            f"{service.url}/v1/chat/completions",
            json=seed_request(True, max_new_tokens=200),
        ) as resp,
    ):
        first = next(resp.iter_bytes())
        assert b"chat.completion.chunk" in first
    # The client is gone: the model server's stream is cut long before its 4 s of tokens.
    deadline = time.monotonic() + 1.0
    while fake.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_streams == 0
    assert fake.streams_cut == 1 and fake.streams_finished == 0


def test_token_budget_with_vllm_tokenizer(fake_server: FakeServer, fake: FakeOpenAI) -> None:
    """vLLM reports max_model_len and counts tokens: the lowest-ranked docs are dropped."""
    server = ServiceServer(settings_for(fake_server.url, model_server="vllm"))
    try:
        docs = [
            {"text": " ".join(f"d{i}w{j}" for j in range(1000)),
             "metadata": {"url": f"https://ex.com/{i}", "citation_id": i + 1}}
            for i in range(6)
        ]  # fmt: skip
        body = {"question": "q?", "reranked_docs": docs, "max_new_tokens": 1000, "stream": False}
        doc = post(server, body).json()
        context = doc["data"]["context"]
        # 4096 - 1000 = 3096 tokens for the prompt: two docs of ~1003 "tokens" fit, a third
        # would not.
        assert context["max_model_len"] == 4096 and context["budget"] == 3096
        assert context["counted_by"] == "server"
        assert (context["docs_used"], context["docs_dropped"]) == (2, 4)
        assert context["prompt_tokens"] <= 3096
        assert fake.tokenize_calls > 0
        sent = fake.requests[-1]["messages"][0]["content"]
        assert "[2] (https://ex.com/1)" in sent and "[3] (https://ex.com/2)" not in sent
        assert [d["citation_id"] for d in doc["data"]["reranked_docs"]] == [1, 2]
        # max_tokens that leave no room for a prompt are refused, naming the field.
        resp = post(server, {**body, "max_new_tokens": 5000})
        assert resp.status_code == 422 and resp.json()["error"]["param"] == "max_tokens"
    finally:
        server.close()


def test_citations_reported_from_the_answer(service: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(tokens=["Deep", " learning", " [2]", " uses", " nets", " [1][9]."]))
    body = {"question": "q", "reranked_docs": DOCS, "stream": True}
    frames = parse_frames(post(service, body).text)
    assert frames[-1].json()["citations"] == [2, 1]  # 9 is no document's id


@pytest.mark.parametrize("stream_options", [None, {"include_usage": True}])
def test_route_via_chain_gives_the_same_sse(
    fake_server: FakeServer, fake: FakeOpenAI, service: ServiceServer, stream_options: Any
) -> None:
    """The fast relay (push mode, the default), the same relay pulled through the request's
    task (``LLM_PUSH_RELAY=false``) and the chain's model step turn the same upstream bytes
    into the same SSE (completion ids and timestamps aside)."""
    via_chain = ServiceServer(settings_for(fake_server.url, route_via_chain=True))
    pulled = ServiceServer(settings_for(fake_server.url, push_relay=False))
    try:
        body = {"question": "q", "reranked_docs": DOCS, "stream": True, "max_new_tokens": 4}
        if stream_options:
            body["stream_options"] = stream_options
        # Reads a few ms apart, some with two chunks: pushed one read at a time.
        script = Script(tokens=["A", " [1]", " b", "c", "d"], tokens_per_write=2, token_delay=0.01)

        def normalized(server: ServiceServer) -> list[Any]:
            fake.push(script)
            out: list[Any] = []
            for frame in parse_frames(post(server, body).text):
                if frame.raw == "[DONE]":
                    out.append("[DONE]")
                    continue
                data = frame.json()
                if frame.field == "data":
                    assert data.pop("id").startswith("chatcmpl-") and data.pop("created") > 0
                out.append((frame.event, frame.field, data))
            return out

        fast, chained = normalized(service), normalized(via_chain)
        assert fast == chained == normalized(pulled)
        assert (
            len(fast) == 1 + 4 + 1 + (1 if stream_options else 0) + 2
        )  # role, tokens, finish, [usage]
        assert fast[-1][2]["citations"] == [1]
    finally:
        via_chain.close()
        pulled.close()


def test_runnable_events_give_the_same_sse(
    fake_server: FakeServer, fake: FakeOpenAI, service: ServiceServer
) -> None:
    """The third way: the chain's runnable events (what callbacks and tracers see), through
    ``chunks_of_events`` and the same encoder, give the route's SSE too."""
    import asyncio

    from llm_service import Settings, build_chain
    from llm_service.protocol.openai import OpenAIChunkEncoder
    from llm_service.serving.relay import Answer, ChainRelay, chunks_of_events, collect

    messages = [{"role": "user", "content": "hi"}]
    script = Script(tokens=["A", " [1]", " b", "c", "d"], tokens_per_write=2)

    def normalized(text: str) -> list[Any]:
        out: list[Any] = []
        for frame in parse_frames(text):
            data = frame.raw if frame.raw == "[DONE]" else frame.json()
            if isinstance(data, dict):
                assert data.pop("id").startswith("chatcmpl-") and data.pop("created") > 0
            out.append((frame.event, frame.field, data))
        return out

    fake.push(script)
    route = normalized(post(service, {"messages": messages, "max_tokens": 4}).text)
    chain = build_chain(
        Settings(_env_file=None, model_server_endpoint=fake_server.url, model_name="fake-model"),
        max_tokens=4,
    )

    async def via_events() -> bytes:
        events = chain.astream_events({"messages": messages}, version="v2")
        relay = ChainRelay(
            chunks_of_events(events), OpenAIChunkEncoder("fake-model"), Answer(), lambda _: None
        )
        return await collect(relay)

    fake.push(script)
    assert normalized(asyncio.run(via_events()).decode()) == route
    assert len(route) == 1 + 4 + 1 + 1  # the role, max_tokens tokens, the finish, [DONE]
    assert route[-2][2]["choices"][0]["finish_reason"] == "length"
    assert fake.requests[0]["messages"] == fake.requests[1]["messages"] == messages


def test_fastapi_route_and_hot_path_answer_alike(
    fake_server: FakeServer, fake: FakeOpenAI, service: ServiceServer
) -> None:
    plain = ServiceServer(settings_for(fake_server.url), hot_path=False)
    try:
        for server in (service, plain):
            frames = parse_frames(post(server, seed_request(True, data={"k": 1})).text)
            assert content_of(frames) == "Deep learning is great."
            assert frames[-1].json() == {"reranked_docs": []}
            assert post(server, seed_request(False)).json()["text"] == "Deep learning is great."
            bad = post(server, {"messages": []})
            assert bad.status_code == 422 and bad.json()["error"]["param"] == "messages"
            fake.push(Script(status=503, headers={"Retry-After": "3"}))
            busy = post(server, seed_request(True))
            assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
    finally:
        plain.close()


def test_importable_chain_reuses_connections_and_leaks_nothing(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    """Outside the app (asyncio.run in a script), calls on one loop share one connection
    pool, and the loop's shutdown closes it: no unclosed-session warnings."""
    import asyncio
    import gc
    import warnings

    from llm_service import build_chain
    from llm_service.settings import Settings

    chain = build_chain(
        Settings(_env_file=None, model_server_endpoint=fake_server.url, model_name="m")
    )
    message = {"messages": [{"role": "user", "content": "hi"}]}

    async def three() -> list[str]:
        texts = []
        for _ in range(3):
            texts.append("".join([c.text async for c in chain.astream(message)]))
        return texts

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(three()) == ["Deep learning is great."] * 3
        assert chain.invoke(message).text == "Deep learning is great."
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []
    assert len(fake.requests) == 4
    assert len(set(fake.peers[:3])) == 1  # one kept-alive connection for the loop's 3 calls


def test_streams_reuse_upstream_connections(service: ServiceServer, fake: FakeOpenAI) -> None:
    """After [DONE] the body's end is read too, so the next request reuses the connection."""
    for _ in range(5):
        assert parse_frames(post(service, seed_request(True)).text)[-1].raw == "[DONE]"
    assert len(fake.peers) == 5 and len(set(fake.peers)) == 1
