"""Tools, structured output, reasoning and logprobs through ``UpstreamChatModel``.

Against the embedded llama.cpp server (marker ``embedded``): forced tool calls are
grammar-constrained there, so even the 135M model makes valid ones. Against the fake server:
what the tiny model cannot do on cue, in vLLM's chunk shapes (reasoning deltas, parallel tool
calls with arguments split over chunks, logprobs), and the exact request bodies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from llm_service.chain import UpstreamChatModel
from llm_service.settings import ModelServer
from llm_service.upstream.client import UpstreamClient
from tests.support.fake_openai import FakeOpenAI, Script, ToolCall
from tests.support.servers import FakeServer


@tool
def get_weather(location: str) -> str:
    """The weather at a location."""
    return "It's sunny."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the person's first name")
    age: int = Field(description="the person's age in years")


async def merged(stream: AsyncIterator[BaseMessage]) -> AIMessageChunk:
    """The chunks of a stream added up (what a consumer of ``astream`` gets)."""
    total: AIMessageChunk | None = None
    async for chunk in stream:
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


def forced(model: UpstreamChatModel) -> Runnable[LanguageModelInput, AIMessage]:
    return model.bind_tools([get_weather], tool_choice="get_weather")


WEATHER = [HumanMessage("What is the weather in Paris? Use the tool.")]

# --- against the embedded llama.cpp server -------------------------------------------------


@pytest.fixture(scope="module")
def llama(embedded_url: str) -> UpstreamChatModel:
    return UpstreamChatModel(
        client=UpstreamClient(embedded_url),
        model_name="SmolLM2-135M-Instruct",
        server=ModelServer.LLAMACPP,
        max_tokens=48,
        temperature=0.0,
    )


@pytest.mark.embedded
async def test_forced_tool_call(llama: UpstreamChatModel) -> None:
    message = await forced(llama).ainvoke(WEATHER)
    assert isinstance(message, AIMessage)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    assert set(call["args"]) == {"location"} and isinstance(call["args"]["location"], str)
    assert not message.invalid_tool_calls


@pytest.mark.embedded
async def test_streamed_tool_call_merges_into_one(llama: UpstreamChatModel) -> None:
    chunks = [c async for c in forced(llama).astream(WEATHER)]
    assert sum(1 for c in chunks if isinstance(c, AIMessageChunk) and c.tool_call_chunks) > 1
    total = await merged(_replay(chunks))
    # llama.cpp repeats the name in every delta: merged, it must still read once.
    [call] = total.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    assert set(call["args"]) == {"location"}
    assert total.response_metadata["finish_reason"] == "tool_calls"


async def _replay(chunks: Sequence[BaseMessage]) -> AsyncIterator[BaseMessage]:
    for chunk in chunks:
        yield chunk


@pytest.mark.embedded
async def test_structured_output_json_schema(llama: UpstreamChatModel) -> None:
    # llama.cpp takes the schema as {"type": "json_object", "schema": ...}: a grammar.
    structured = llama.with_structured_output(Person, method="json_schema", max_tokens=96)
    person = await structured.ainvoke("Alice is 30 years old. Who is she?")
    assert isinstance(person, Person)


@pytest.mark.embedded
async def test_structured_output_function_calling(llama: UpstreamChatModel) -> None:
    structured = llama.with_structured_output(Person, include_raw=True, max_tokens=96)
    out = await structured.ainvoke("Alice is 30 years old. Who is she?")
    assert isinstance(out, dict)
    assert isinstance(out["parsed"], Person) and out["parsing_error"] is None
    assert out["raw"].tool_calls[0]["name"] == "Person"


@pytest.mark.embedded
async def test_tool_message_round_trip(llama: UpstreamChatModel) -> None:
    call = await forced(llama).ainvoke(WEATHER)
    assert isinstance(call, AIMessage)
    result = get_weather.invoke(call.tool_calls[0])
    assert isinstance(result, ToolMessage)
    answer = await llama.bind_tools([get_weather], tool_choice="none").ainvoke(
        [*WEATHER, call, result]
    )
    assert isinstance(answer, AIMessage) and not answer.tool_calls
    assert answer.text.strip()


@pytest.mark.embedded
async def test_plain_chat_with_tools_bound(llama: UpstreamChatModel) -> None:
    # tool_choice "auto": llama.cpp cannot stream the model's own choice, so the whole
    # answer comes as one chunk, whichever it chose.
    total = await merged(llama.bind_tools([get_weather]).astream(WEATHER))
    assert total.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    assert total.tool_calls or total.text.strip()


@pytest.mark.embedded
async def test_logprobs_from_llamacpp(llama: UpstreamChatModel) -> None:
    model = llama.bind(logprobs=True, max_tokens=4)  # OpenAI's form: no top_logprobs
    whole = await model.ainvoke("Hi")
    entries = whole.response_metadata["logprobs"]["content"]
    assert entries and all(isinstance(e["logprob"], float) for e in entries)
    total = await merged(model.astream("Hi"))
    assert 1 <= len(total.response_metadata["logprobs"]["content"]) <= 4  # one per token


# --- against the fake server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_client(fake_server: FakeServer) -> UpstreamClient:
    return UpstreamClient(fake_server.url)


def model_for(client: UpstreamClient, server: ModelServer = ModelServer.VLLM) -> UpstreamChatModel:
    return UpstreamChatModel(client=client, model_name="fake-model", server=server)


PARALLEL = [
    ToolCall("get_weather", ['{"loc', 'ation": "Par', 'is"}'], id="call-a"),
    ToolCall("add", ['{"a": 1', ', "b"', ": 2}"], id="call-b"),
]


async def test_parallel_tool_calls_streamed_in_pieces(
    fake: FakeOpenAI, fake_client: UpstreamClient
) -> None:
    fake.push(Script(tokens=[], tool_calls=PARALLEL))
    bound = model_for(fake_client).bind_tools([get_weather, add], tool_choice="any")
    total = await merged(bound.astream("Weather in Paris, and 1 + 2?"))
    assert total.tool_calls == [
        {"name": "get_weather", "args": {"location": "Paris"}, "id": "call-a",
         "type": "tool_call"},
        {"name": "add", "args": {"a": 1, "b": 2}, "id": "call-b", "type": "tool_call"},
    ]  # fmt: skip
    assert total.response_metadata["finish_reason"] == "tool_calls"
    assert fake.requests[-1]["tool_choice"] == "required"


async def test_parallel_tool_calls_whole(fake: FakeOpenAI, fake_client: UpstreamClient) -> None:
    fake.push(Script(tokens=[], tool_calls=PARALLEL))
    message = await model_for(fake_client).bind_tools([get_weather, add]).ainvoke("Go")
    assert [(c["name"], c["args"], c["id"]) for c in message.tool_calls] == [
        ("get_weather", {"location": "Paris"}, "call-a"),
        ("add", {"a": 1, "b": 2}, "call-b"),
    ]
    assert message.content == "" and message.response_metadata["finish_reason"] == "tool_calls"


async def test_unparsable_arguments_are_invalid_tool_calls(
    fake: FakeOpenAI, fake_client: UpstreamClient
) -> None:
    broken = [ToolCall("add", ['{"a": 1, "b":'], id="call-x")]
    fake.push(Script(tokens=[], tool_calls=broken), Script(tokens=[], tool_calls=broken))
    model = model_for(fake_client).bind_tools([add])
    whole = await model.ainvoke("1 + ?")
    assert isinstance(whole, AIMessage)
    assert not whole.tool_calls
    [invalid] = whole.invalid_tool_calls
    assert invalid["name"] == "add" and invalid["args"] == '{"a": 1, "b":' and invalid["error"]
    # Streamed, the text arrives as it was sent; LangChain reads what of it parses as
    # partial JSON into tool_calls, as it does for every chat model.
    streamed = await merged(model.astream("1 + ?"))
    assert [c["args"] for c in streamed.tool_call_chunks] == ['{"a": 1, "b":']


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning(fake: FakeOpenAI, fake_client: UpstreamClient, field: str) -> None:
    script = Script(reasoning=["Let me", " think."], reasoning_field=field)
    fake.push(script, script)
    model = model_for(fake_client)
    total = await merged(model.astream("Hi"))
    assert total.additional_kwargs["reasoning_content"] == "Let me think."
    assert total.text == "Deep learning is great."
    whole = await model.ainvoke("Hi")
    assert whole.additional_kwargs["reasoning_content"] == "Let me think."
    assert whole.text == "Deep learning is great."


async def test_logprobs(fake: FakeOpenAI, fake_client: UpstreamClient) -> None:
    model = model_for(fake_client).bind(logprobs=True, top_logprobs=2)
    total = await merged(model.astream("Hi"))
    entries = total.response_metadata["logprobs"]["content"]
    assert [e["token"] for e in entries] == ["Deep", " learning", " is", " great", "."]
    assert len(entries[0]["top_logprobs"]) == 2
    whole = await model.ainvoke("Hi")
    assert len(whole.response_metadata["logprobs"]["content"]) == 5
    assert fake.requests[-1]["logprobs"] is True and fake.requests[-1]["top_logprobs"] == 2
    plain = await model_for(fake_client).ainvoke("Hi")
    assert "logprobs" not in plain.response_metadata


async def test_plain_stream_keeps_its_shape(fake: FakeOpenAI, fake_client: UpstreamClient) -> None:
    chunks = [c async for c in model_for(fake_client).astream("Hi")]
    assert [c.text for c in chunks if c.text] == ["Deep", " learning", " is", " great", "."]
    assert all(not c.tool_call_chunks and not c.additional_kwargs for c in chunks)
    total = await merged(_replay(list(chunks)))
    assert total.response_metadata == {"finish_reason": "stop", "model_name": "fake-model"}


def sent(fake: FakeOpenAI) -> dict[str, Any]:
    return fake.requests[-1]


HISTORY: list[BaseMessage] = [
    SystemMessage("Be brief.", additional_kwargs={"__openai_role__": "developer"}),
    HumanMessage(
        [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "url": "https://example.com/cat.png"},
        ]
    ),
    AIMessage(
        "",
        tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}],
    ),
    ToolMessage("3", tool_call_id="c1"),
]


async def test_messages_sent_in_openai_shapes(
    fake: FakeOpenAI, fake_client: UpstreamClient
) -> None:
    await model_for(fake_client, ModelServer.OPENAI).ainvoke(HISTORY)
    assert sent(fake)["messages"] == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "add", "arguments": '{"a":1,"b":2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
    ]  # fmt: skip
    # Other servers' chat templates know the system role, not OpenAI's developer role.
    await model_for(fake_client, ModelServer.VLLM).ainvoke(HISTORY)
    assert sent(fake)["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_request_fields_forwarded(fake: FakeOpenAI, fake_client: UpstreamClient) -> None:
    fields: dict[str, Any] = {
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {"42": -100.0},
        "user": "u-1", "logprobs": True, "top_logprobs": 1, "n": 1,
        "response_format": {"type": "json_object"},
    }  # fmt: skip
    model = model_for(fake_client, ModelServer.VLLM)
    bound = model.bind_tools([add], tool_choice="add", parallel_tool_calls=False)
    await bound.bind(max_completion_tokens=7, **fields).ainvoke("Hi")
    body = sent(fake)
    assert {k: body[k] for k in fields if k != "n"} == {k: v for k, v in fields.items() if k != "n"}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["parallel_tool_calls"] is False
    assert body["tools"][0]["function"]["name"] == "add"
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body
    with pytest.raises(ValueError, match="n=2"):
        await model.ainvoke("Hi", n=2)


async def test_llamacpp_request_forms(fake: FakeOpenAI, fake_client: UpstreamClient) -> None:
    model = model_for(fake_client, ModelServer.LLAMACPP)
    fake.push(Script(tokens=['{"name": "Alice", "age": 30}']))
    structured = model.with_structured_output(Person, method="json_schema", max_completion_tokens=9)
    assert await structured.ainvoke("Alice, 30") == Person(name="Alice", age=30)
    body = sent(fake)
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body
    assert body["response_format"]["type"] == "json_object"
    assert set(body["response_format"]["schema"]["properties"]) == {"name", "age"}
    fake.push(Script(tokens=[], tool_calls=[ToolCall("add", ['{"a": 1, "b": 2}'])]))
    await model.bind_tools([add], tool_choice="any").ainvoke([HumanMessage(["1 +", "2"])])
    body = sent(fake)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    # The tools are listed in the system message: one is added for them.
    assert body["messages"] == [{"role": "system", "content": ""},
                                {"role": "user", "content": "1 +\n2"}]  # fmt: skip
    await model.bind_tools([add, get_weather]).ainvoke("Hi")
    assert sent(fake)["tool_choice"] == "auto"


async def test_unknown_tool_choice_is_refused(fake_client: UpstreamClient) -> None:
    with pytest.raises(ValueError, match="names none of the bound tools"):
        model_for(fake_client).bind_tools([add], tool_choice="subtract")
