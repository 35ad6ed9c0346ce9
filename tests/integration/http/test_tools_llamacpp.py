"""OpenAI's fields through the service to the real embedded llama.cpp server (SmolLM2-135M,
ChatML with tool calling): a forced tool call whole and streamed, structured output by JSON
schema (translated to llama.cpp's form), the answer's token limit under OpenAI's newer
name, content parts and the developer role, logprobs, what llama.cpp cannot do (n > 1) and
unknown fields. The official openai SDK's parse and streamed tool calls as well."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from tests.support.servers import ServiceServer, settings_for
from tests.support.sse import Frame, content_of, parse_frames

pytestmark = pytest.mark.embedded

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOL = {"type": "function", "function": {"name": "get_weather",
                                         "description": "The weather in a city now",
                                         "parameters": WEATHER}}  # fmt: skip
FORCED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def post(service: ServiceServer, **body: Any) -> httpx.Response:
    body.setdefault("messages", ASK)
    body.setdefault("temperature", 0)
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=120)


def chunks_of(frames: list[Frame]) -> list[dict[str, Any]]:
    return [f.json() for f in frames if f.field == "data" and f.event is None and f.raw != "[DONE]"]


def test_forced_tool_call_whole(llama_service: ServiceServer) -> None:
    resp = post(llama_service, stream=False, tools=[TOOL], tool_choice=FORCED, max_tokens=64)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments, dict) and isinstance(arguments["city"], str)


def test_forced_tool_call_streamed(llama_service: ServiceServer) -> None:
    resp = post(llama_service, stream=True, tools=[TOOL], tool_choice=FORCED, max_tokens=64)
    assert resp.status_code == 200, resp.text
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]"
    chunks = chunks_of(frames)
    deltas = [d for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls") or ()]
    assert len(deltas) > 1  # the arguments came in pieces
    assert {d["index"] for d in deltas} == {0}  # one call
    assert {d["function"].get("name") for d in deltas} - {None} == {"get_weather"}
    arguments = "".join(d["function"].get("arguments") or "" for d in deltas)
    assert isinstance(json.loads(arguments)["city"], str)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert len({c["id"] for c in chunks}) == 1


class Person(BaseModel):
    name: str
    age: int


PERSON_SCHEMA = Person.model_json_schema()


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_format_is_translated(
    llama_service: ServiceServer, stream: bool
) -> None:
    # llama.cpp refuses type json_schema; the service sends {type: json_object, schema}.
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    messages = [{"role": "user", "content": "Invent a person: name and age, as JSON."}]
    resp = post(llama_service, messages=messages, stream=stream, response_format=fmt,
                max_tokens=60)  # fmt: skip
    assert resp.status_code == 200, resp.text
    text = content_of(parse_frames(resp.text)) if stream else resp.json()["text"]
    person = Person.model_validate_json(text)
    assert person.name


def test_max_completion_tokens_caps_the_answer(llama_service: ServiceServer) -> None:
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    resp = post(llama_service, messages=messages, stream=False, max_completion_tokens=5)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert 0 < doc["usage"]["completion_tokens"] <= 5
    assert doc["choices"][0]["finish_reason"] == "length"


def test_content_parts_and_developer_role(llama_service: ServiceServer) -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is"},
                                     {"type": "text", "text": "deep learning?"}]},
    ]  # fmt: skip
    for stream in (False, True):
        resp = post(llama_service, messages=messages, stream=stream, max_tokens=8)
        assert resp.status_code == 200, resp.text
        text = content_of(parse_frames(resp.text)) if stream else resp.json()["text"]
        assert text.strip()


def test_tool_results_in_the_conversation(llama_service: ServiceServer) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]  # fmt: skip
    resp = post(llama_service, messages=messages, tools=[TOOL], stream=False, max_tokens=8)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def test_n_above_one_is_refused(llama_service: ServiceServer) -> None:
    # llama.cpp's server takes n but answers one choice: refused rather than dropped.
    resp = post(llama_service, stream=False, n=2)
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["param"] == "n"
    assert error["message"] == (
        "n: not supported by llamacpp model servers (LLM_MODEL_SERVER=llamacpp)"
    )
    assert post(llama_service, stream=False, n=1, max_tokens=2).status_code == 200


def test_logprobs_whole_and_streamed(llama_service: ServiceServer) -> None:
    resp = post(llama_service, stream=False, logprobs=True, top_logprobs=2, max_tokens=4)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    entries = doc["choices"][0]["logprobs"]["content"]
    assert len(entries) == doc["usage"]["completion_tokens"]
    assert all(isinstance(e["logprob"], float) and e["top_logprobs"] for e in entries)
    assert "".join(e["token"] for e in entries) == doc["text"]

    frames = parse_frames(post(llama_service, stream=True, logprobs=True, max_tokens=4).text)
    chunks = chunks_of(frames)
    streamed = [e for c in chunks for ch in c["choices"] if ch.get("logprobs")
                for e in ch["logprobs"]["content"]]  # fmt: skip
    assert streamed and "".join(e["token"] for e in streamed) == content_of(frames)


def test_unknown_field_is_refused_unless_ignored(
    llama_service: ServiceServer, embedded_url: str
) -> None:
    resp = post(llama_service, stream=False, foo=1)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == "Unrecognized request argument supplied: foo"
    lenient = ServiceServer(
        settings_for(embedded_url, model_server="llamacpp", model_name="SmolLM2-135M-Instruct",
                     ignore_unknown_fields=True)
    )  # fmt: skip
    try:
        assert post(lenient, stream=False, foo=1, max_tokens=2).status_code == 200
    finally:
        lenient.close()


@pytest.fixture(scope="module")
def client(llama_service: ServiceServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{llama_service.url}/v1", api_key="unused") as sdk:
        yield sdk


def test_openai_sdk_structured_output(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Invent a person: name and age, as JSON."}
    ]
    answer = client.chat.completions.parse(
        model="SmolLM2-135M-Instruct", messages=messages, response_format=Person,
        temperature=0, max_completion_tokens=60,
    )  # fmt: skip
    person = answer.choices[0].message.parsed
    assert isinstance(person, Person) and person.name


def test_openai_sdk_streamed_tool_call(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    ]
    with client.chat.completions.stream(
        model="SmolLM2-135M-Instruct", messages=messages, tools=tools, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=64,
    ) as stream:  # fmt: skip
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    assert final.choices[0].finish_reason == "tool_calls"
