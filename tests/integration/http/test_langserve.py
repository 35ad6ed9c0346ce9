"""LangServe-style routes under /llm: langserve's own RemoteRunnable, unmodified, against them.

``langserve`` is installed without its server extra: only its client runs here.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langserve import RemoteRunnable

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import parse_frames

DOCS = [
    {"text": "Deep learning uses neural networks.",
     "metadata": {"url": "https://example.com/dl", "citation_id": 1}},
]  # fmt: skip
QUESTION = {"question": "What is deep learning?", "reranked_docs": DOCS}
ANSWER = "Deep learning is great."


@pytest.fixture
async def remote(service: ServiceServer) -> AsyncIterator[RemoteRunnable[Any, Any]]:
    client: RemoteRunnable[Any, Any] = RemoteRunnable(f"{service.url}/llm", timeout=30)
    yield client
    client.sync_client.close()
    await client.async_client.aclose()


def post(service: ServiceServer, route: str, body: Any) -> httpx.Response:
    return httpx.post(f"{service.url}/llm/{route}", json=body, timeout=30)


# --- RemoteRunnable ------------------------------------------------------------------------


def test_invoke(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    out = remote.invoke(QUESTION)
    assert isinstance(out, AIMessage)
    assert out.text == ANSWER
    assert out.response_metadata["finish_reason"] == "stop"
    sent = fake.requests[-1]["messages"]
    assert "Deep learning uses neural networks." in sent[0]["content"] + sent[1]["content"]


async def test_ainvoke_with_langchain_messages(
    remote: RemoteRunnable[Any, Any], fake: FakeOpenAI
) -> None:
    out = await remote.ainvoke({"messages": [HumanMessage("Hi")]})
    assert isinstance(out, AIMessage) and out.text == ANSWER
    assert fake.requests[-1]["messages"] == [{"role": "user", "content": "Hi"}]


def test_batch(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    fake.push(Script(tokens=["one"]), Script(tokens=["two"]))
    outs = remote.batch([QUESTION, {"messages": [{"role": "user", "content": "Hi"}]}])
    assert sorted(o.text for o in outs) == ["one", "two"]
    assert all(isinstance(o, AIMessage) for o in outs)


async def test_abatch(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    outs = await remote.abatch([QUESTION, QUESTION])
    assert [o.text for o in outs] == [ANSWER, ANSWER]


def test_stream(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    chunks = list(remote.stream(QUESTION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.text for c in chunks) == ANSWER
    assert len([c for c in chunks if c.text]) == 5
    assert any(c.response_metadata.get("finish_reason") == "stop" for c in chunks)


async def test_astream(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    chunks = [c async for c in remote.astream(QUESTION)]
    assert "".join(c.text for c in chunks) == ANSWER


async def test_astream_events(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    events = [e async for e in remote.astream_events(QUESTION, version="v2")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    assert events[0]["name"] == "llm_service"
    assert "on_prompt_start" in kinds and "on_chat_model_start" in kinds
    tokens = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    assert all(isinstance(t, AIMessageChunk) for t in tokens)
    assert "".join(t.text for t in tokens) == ANSWER
    assert isinstance(events[-1]["data"]["output"], AIMessage)


async def test_astream_events_filters(remote: RemoteRunnable[Any, Any], fake: FakeOpenAI) -> None:
    events = [
        e async for e in remote.astream_events(QUESTION, version="v2", include_types=["prompt"])
    ]
    assert {e["event"] for e in events} == {"on_prompt_start", "on_prompt_end"}


# --- wire format ---------------------------------------------------------------------------


def test_invoke_wire_format(service: ServiceServer, fake: FakeOpenAI) -> None:
    body = post(service, "invoke", {"input": QUESTION, "config": {}, "kwargs": {}}).json()
    assert body["output"]["type"] == "ai" and body["output"]["content"] == ANSWER
    assert set(body["metadata"]) == {"run_id", "feedback_tokens"}


def test_batch_wire_format(service: ServiceServer, fake: FakeOpenAI) -> None:
    body = post(service, "batch", {"inputs": [QUESTION, QUESTION], "config": {}}).json()
    assert [o["content"] for o in body["output"]] == [ANSWER, ANSWER]
    assert len(set(body["metadata"]["run_ids"])) == 2


def test_stream_wire_format(service: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(service, "stream", {"input": QUESTION})
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = parse_frames(resp.text)
    assert frames[0].event == "metadata" and len(frames[0].json()["run_id"]) == 36
    data = [f.json() for f in frames if f.event == "data"]
    assert "".join(d["content"] for d in data) == ANSWER
    assert all(d["type"] == "AIMessageChunk" for d in data)
    assert any(d["response_metadata"].get("finish_reason") == "stop" for d in data)
    assert resp.text.endswith("}\n\nevent: end\n\n")  # an event with no data line


def test_stream_events_run_ids(service: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(service, "stream_events", {"input": QUESTION})
    frames = parse_frames(resp.text)
    events = [f.json() for f in frames if f.event == "data"]
    assert resp.text.endswith("\n\nevent: end\n\n")
    top = events[0]
    assert top["event"] == "on_chain_start" and top["parent_ids"] == []
    assert all(top["run_id"] in e["parent_ids"] for e in events[1:] if e["run_id"] != top["run_id"])


# --- schemas and knobs ---------------------------------------------------------------------


def test_schemas(service: ServiceServer) -> None:
    inp = httpx.get(f"{service.url}/llm/input_schema").json()
    assert {"messages", "question", "reranked_docs", "history"} <= set(inp["properties"])
    out = httpx.get(f"{service.url}/llm/output_schema").json()
    assert "AIMessage" in str(out)
    config = httpx.get(f"{service.url}/llm/config_schema").json()
    knobs = config["$defs"][config["properties"]["configurable"]["$ref"].rsplit("/", 1)[1]]
    assert set(knobs["properties"]) == {"prompt_template", "temperature", "top_p", "max_tokens"}


def test_configurable_knobs_reach_the_model(
    remote: RemoteRunnable[Any, Any], fake: FakeOpenAI
) -> None:
    knobs = {"temperature": 0.3, "max_tokens": 7, "top_p": 0.5, "prompt_template": "pl"}
    remote.invoke(QUESTION, {"configurable": knobs})
    sent = fake.requests[-1]
    assert (sent["temperature"], sent["max_tokens"], sent["top_p"]) == (0.3, 7, 0.5)
    remote.invoke(QUESTION)
    default = fake.requests[-1]
    assert "temperature" not in default and default["max_tokens"] != 7
    assert default["messages"][0]["content"] != sent["messages"][0]["content"]  # other template


@pytest.mark.parametrize(
    ("configurable", "param"),
    [
        ({"model_name": "gpt-4"}, "config.configurable.model_name"),
        ({"temperature": 9}, "config.configurable.temperature"),
        ({"max_tokens": 10**6}, "config.configurable.max_tokens"),
        ({"prompt_template": "nope"}, "config.configurable.prompt_template"),
    ],
)
def test_other_knobs_are_422(
    service: ServiceServer, fake: FakeOpenAI, configurable: dict[str, Any], param: str
) -> None:
    for route in ("invoke", "stream", "stream_events"):
        resp = post(service, route, {"input": QUESTION, "config": {"configurable": configurable}})
        assert resp.status_code == 422, route
        assert resp.json()["error"]["param"] == param
        assert param in resp.json()["error"]["message"]
    assert fake.requests == []


def test_max_tokens_knob_reaches_the_token_budget(service: ServiceServer, fake: FakeOpenAI) -> None:
    # The fake reports a 4096-token window: 5000 tokens for the answer leave no room.
    config = {"configurable": {"max_tokens": 5000}}
    resp = post(service, "invoke", {"input": QUESTION, "config": config})
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "config.configurable.max_tokens"
    assert "context window of 4096" in resp.json()["error"]["message"]
    assert fake.requests == []
    frames = parse_frames(post(service, "stream", {"input": QUESTION, "config": config}).text)
    assert frames[-1].event == "error" and frames[-1].json()["status_code"] == 422


def test_remote_runnable_raises_on_a_bad_knob(remote: RemoteRunnable[Any, Any]) -> None:
    with pytest.raises(httpx.HTTPStatusError, match="422"):
        remote.invoke(QUESTION, {"configurable": {"seed": 1}})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": {"question": ""}}, "input.question"),
        ({"input": {"messages": [{"role": "wizard", "content": "x"}]}}, "input.messages.0.role"),
        ({"input": {"questoin": "typo"}}, "input.questoin"),
        ({"input": {}}, "input"),
        ({"config": {}}, "input"),
    ],
)
def test_bad_input_is_422(
    service: ServiceServer, fake: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    resp = post(service, "invoke", body)
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == param


def test_body_over_the_limit_is_413(service: ServiceServer, fake: FakeOpenAI) -> None:
    big = {"input": {"question": "q", "reranked_docs": [{"text": "x" * 9_000_000}]}}
    resp = post(service, "invoke", big)
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "body"
    broken = httpx.post(f"{service.url}/llm/invoke", content=b"{not json", timeout=30)
    assert broken.status_code == 422 and broken.json()["error"]["param"] == "body"
    assert fake.requests == []


def test_bad_batch_input_names_the_item(service: ServiceServer) -> None:
    resp = post(service, "batch", {"inputs": [QUESTION, {"question": 3}]})
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "inputs.1.question"


# --- errors --------------------------------------------------------------------------------


def test_upstream_error_before_streaming_is_a_status(
    remote: RemoteRunnable[Any, Any], fake: FakeOpenAI
) -> None:
    fake.push(Script(status=429, headers={"Retry-After": "2"}))
    with pytest.raises(httpx.HTTPStatusError) as info:
        remote.invoke(QUESTION)
    assert info.value.response.status_code == 503


@pytest.mark.parametrize("route", ["stream", "stream_events"])
def test_error_inside_a_stream_is_an_error_event_then_the_end(
    service: ServiceServer, fake: FakeOpenAI, route: str
) -> None:
    fake.push(Script(die_after=2))
    resp = post(service, route, {"input": QUESTION})
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert frames[-1].event == "error"
    error = frames[-1].json()
    assert error["status_code"] == 502 and "stream" in error["message"]
    texts = [f.json() for f in frames if f.event == "data"]
    if route == "stream":
        assert "".join(t["content"] for t in texts) == "Deep learning"


def test_error_before_the_first_chunk_is_an_error_event(
    service: ServiceServer, fake: FakeOpenAI
) -> None:
    fake.push(Script(status=500, error_body={"object": "error", "message": "boom"}))
    frames = parse_frames(post(service, "stream", {"input": QUESTION}).text)
    assert [f.event for f in frames] == ["metadata", "error"]
    assert frames[1].json()["status_code"] == 502 and "boom" in frames[1].json()["message"]


def test_remote_stream_raises_the_error_event(
    remote: RemoteRunnable[Any, Any], fake: FakeOpenAI
) -> None:
    fake.push(Script(die_after=1))
    with pytest.raises(httpx.HTTPStatusError) as info:
        list(remote.stream(QUESTION))
    assert info.value.response.status_code == 502


@pytest.mark.parametrize("route", ["stream", "stream_events"])
def test_client_disconnect_closes_upstream(
    service: ServiceServer, fake: FakeOpenAI, route: str
) -> None:
    fake.push(Script(tokens=[f" t{i}" for i in range(200)], token_delay=0.02))
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{service.url}/llm/{route}", json={"input": QUESTION}) as resp,
    ):
        for line in resp.iter_lines():
            if '"t1"' in line or " t1" in line:
                break
    # The client is gone: the model server's stream is cut long before its 4 s of tokens.
    deadline = time.monotonic() + 1.0
    while fake.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_streams == 0
    assert fake.streams_cut == 1 and fake.streams_finished == 0


# --- settings ------------------------------------------------------------------------------


def test_path_and_playground_follow_the_settings(fake_server: FakeServer, fake: FakeOpenAI) -> None:
    other = ServiceServer(
        settings_for(fake_server.url, langserve_path="/rag/chain", playground_enabled=False)
    )
    try:
        remote: RemoteRunnable[Any, Any] = RemoteRunnable(f"{other.url}/rag/chain")
        assert remote.invoke(QUESTION).text == ANSWER
        remote.sync_client.close()
        assert httpx.get(f"{other.url}/rag/chain/playground").status_code == 404
        assert httpx.post(f"{other.url}/llm/invoke", json={"input": QUESTION}).status_code == 404
    finally:
        other.close()


@pytest.mark.parametrize("path", ["llm", "/llm/", "/", "/a b"])
def test_bad_langserve_path_stops_start_up(path: str) -> None:
    from llm_service.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="LLM_LANGSERVE_PATH"):
        Settings.load(langserve_path=path)


async def test_tool_conversation_reaches_the_server_in_openai_shape(
    remote: RemoteRunnable[Any, Any], fake: FakeOpenAI
) -> None:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}
    messages = [HumanMessage("Weather in Paris?"), AIMessage("", tool_calls=[call]),
                ToolMessage("18 C", tool_call_id="call_1")]  # fmt: skip
    out = await remote.ainvoke({"messages": messages})
    assert isinstance(out, AIMessage)
    sent = fake.requests[-1]["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] is None
    (tool_call,) = sent[1]["tool_calls"]
    assert tool_call["id"] == "call_1" and tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}
