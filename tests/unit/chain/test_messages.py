"""LangChain <-> OpenAI message shapes and the per-server request forms, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    HumanMessage,
    ToolMessage,
)

from llm_service.chain.messages import (
    StreamedDelta,
    ai_message_fields,
    content_parts,
    message_to_dict,
)
from llm_service.chain.upstream_model import server_payload
from llm_service.settings import ModelServer


def test_image_blocks_become_image_url_parts() -> None:
    url = {"type": "image_url", "image_url": {"url": "data:image/png;base64,QQ"}}
    assert content_parts(
        [
            "look",
            {"type": "image", "base64": "QQ", "mime_type": "image/png"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "QQ"}},
            {"type": "image_url", "image_url": "data:image/png;base64,QQ"},
            {"type": "text", "text": "twice", "cache_control": {"type": "ephemeral"}},
        ]
    ) == [{"type": "text", "text": "look"}, url, url, url,
          {"type": "text", "text": "twice"}]  # fmt: skip


def test_blocks_without_a_chat_form_are_refused() -> None:
    with pytest.raises(ValueError, match="'tool_result'"):
        message_to_dict(HumanMessage([{"type": "tool_result", "content": "x"}]))
    image = {"type": "image", "url": "https://example.com/a.png"}
    with pytest.raises(ValueError, match="tool message"):
        message_to_dict(ToolMessage([image], tool_call_id="t"))


def test_assistant_history_keeps_text_and_tool_calls_only() -> None:
    message = AIMessage(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me add."},
            {"type": "tool_use", "id": "c1", "name": "add", "input": {"a": 1}},
        ],
        tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}],
        invalid_tool_calls=[{"name": "add", "args": "{bad", "id": "c2", "error": None,
                             "type": "invalid_tool_call"}],
    )  # fmt: skip
    assert message_to_dict(message) == {
        "role": "assistant",
        "content": "Let me add.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}},
            {"id": "c2", "type": "function", "function": {"name": "add", "arguments": "{bad"}},
        ],
    }
    assert message_to_dict(ChatMessage(content="x", role="developer"))["role"] == "developer"
    assert message_to_dict(HumanMessage("hi", name="ann")) == {
        "role": "user", "content": "hi", "name": "ann"}  # fmt: skip


def test_whole_message_fields() -> None:
    fields = ai_message_fields(
        {
            "content": None,
            "reasoning_content": "because",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
                {"id": "c", "type": "function", "function": {"name": "h", "arguments": "{"}},
            ],
        }
    )
    message = AIMessage(**fields)
    assert message.content == "" and message.additional_kwargs == {"reasoning_content": "because"}
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("f", {})]
    assert [c["name"] for c in message.invalid_tool_calls] == ["g", "h"]


def test_repeated_ids_and_names_are_passed_on_once() -> None:
    # llama.cpp's shape: every delta repeats the call's id and name.
    delta = StreamedDelta()
    pieces = ['{"a": ', "1}"]
    chunks = [
        AIMessageChunk(**delta.fields({"tool_calls": [
            {"index": 0, "id": "c1", "type": "function",
             "function": {"name": "add", "arguments": piece}}]}))
        for piece in pieces
    ]  # fmt: skip
    total = chunks[0] + chunks[1]
    assert total.tool_calls == [{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]


def payload(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("server", "key"),
    [(ModelServer.TGI, "max_tokens"), (ModelServer.LLAMACPP, "max_tokens"),
     (ModelServer.VLLM, "max_completion_tokens"), (ModelServer.OPENAI, "max_completion_tokens")],
)  # fmt: skip
def test_max_completion_tokens(server: ModelServer, key: str) -> None:
    out = server_payload(payload(max_tokens=100, max_completion_tokens=5), server)
    assert {k: v for k, v in out.items() if k.startswith("max")} == {key: 5}


def test_llamacpp_tool_choice_forms() -> None:
    one = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    two = [*one, {"type": "function", "function": {"name": "g", "parameters": {}}}]
    llama = ModelServer.LLAMACPP
    assert server_payload(payload(tools=one, tool_choice="required"), llama)["tool_choice"] == {
        "type": "function", "function": {"name": "f"}}  # fmt: skip
    assert server_payload(payload(tools=two, tool_choice="required"), llama)["tool_choice"] == (
        "auto"
    )
    assert server_payload(payload(tools=two), llama)["tool_choice"] == "auto"
    assert server_payload(payload(tools=two), ModelServer.VLLM).get("tool_choice") is None
    assert server_payload(payload(n=1), ModelServer.VLLM) == payload()
