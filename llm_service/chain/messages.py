"""LangChain messages and usage to and from OpenAI's wire shapes, written once.

Out: ``message_to_dict`` (a LangChain message as an OpenAI chat message: content parts, an
assistant's tool calls, tool results). In: ``ai_message_fields`` (a whole answer's
``message``) and ``StreamedDelta`` (one stream's ``delta`` objects), both to the fields of
LangChain's ``AIMessage``/``AIMessageChunk``; ``usage_metadata``/``openai_usage`` for usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolCallChunk,
    ToolMessage,
    convert_to_openai_data_block,
    is_data_content_block,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call

from llm_service.protocol.openai import role_of

REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where servers put a reasoning model's thinking: vLLM's ``reasoning_content`` (newer
vLLM: ``reasoning``). It reaches LangChain as ``additional_kwargs["reasoning_content"]``."""


# --- LangChain -> OpenAI -------------------------------------------------------------------


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """An OpenAI chat message dict for a LangChain message.

    An ``AIMessage``'s tool calls become OpenAI ``tool_calls`` (content null when it has no
    text), a ``ToolMessage`` a ``tool`` message with its ``tool_call_id``, list content
    OpenAI content parts (text, ``image_url``, file, audio). A ``SystemMessage`` marked
    ``additional_kwargs["__openai_role__"] = "developer"`` (as langchain-openai marks it)
    keeps that role.
    """
    if isinstance(message, AIMessage):
        return _assistant(message)
    if isinstance(message, ToolMessage):
        content = _tool_text(message)
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": content}
    if isinstance(message, ChatMessage):
        role = role_of(message.role)
    elif isinstance(message, SystemMessage):
        role = message.additional_kwargs.get("__openai_role__") or "system"
    else:
        role = role_of(message.type)
    out: dict[str, Any] = {"role": role, "content": content_parts(message.content)}
    if message.name:
        out["name"] = message.name
    return out


def content_parts(content: str | Sequence[str | dict[Any, Any]]) -> str | list[dict[str, Any]]:
    """A message's content as OpenAI takes it: a string as it is, a list as content parts.

    Raises ``ValueError`` for a block with no chat-completions form (rather than leaving
    it out of the prompt unseen)."""
    if isinstance(content, str):
        return content
    return [_part(block) for block in content]


def _part(block: str | dict[Any, Any]) -> dict[str, Any]:
    if isinstance(block, str):
        return {"type": "text", "text": block}
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image_url":
        image = block["image_url"]
        url = {"url": image} if isinstance(image, str) else image
        return {"type": "image_url", "image_url": url}
    if kind in ("input_audio", "file") and kind in block:  # already OpenAI's shape
        return {"type": kind, kind: block[kind]}
    if kind == "image" and isinstance(source := block.get("source"), Mapping):  # Anthropic's
        if source.get("type") == "base64":
            url = f"data:{source['media_type']};base64,{source['data']}"
        else:
            url = source["url"]
        return {"type": "image_url", "image_url": {"url": url}}
    if is_data_content_block(block):  # LangChain's standard image, file and audio blocks
        return convert_to_openai_data_block(block)
    raise ValueError(f"content block of type {kind!r} has no OpenAI chat-completions form")


def _assistant(message: AIMessage) -> dict[str, Any]:
    # An assistant turn goes back as its text and its tool calls; other blocks of its
    # content (tool_use, thinking, reasoning) repeat what tool_calls carry or are the
    # model's own reasoning, which servers do not take back.
    out: dict[str, Any] = {"role": "assistant", "content": message.text}
    if message.name:
        out["name"] = message.name
    calls = [openai_tool_call(tc) for tc in message.tool_calls]
    calls += [_invalid_tool_call(tc) for tc in message.invalid_tool_calls]
    if calls:
        out["tool_calls"] = calls
        out["content"] = out["content"] or None
    return out


def openai_tool_call(call: ToolCall) -> dict[str, Any]:
    """OpenAI's ``tool_calls`` entry for a LangChain tool call."""
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": orjson.dumps(call["args"]).decode()},
    }


def _invalid_tool_call(call: InvalidToolCall) -> dict[str, Any]:
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call.get("name") or "", "arguments": call.get("args") or ""},
    }


def _tool_text(message: ToolMessage) -> str:
    """A tool result's text: chat completions' tool messages carry text only."""
    content = message.content
    if isinstance(content, str):
        return content
    texts = []
    for block in content:
        part = _part(block)
        if part["type"] != "text":
            raise ValueError(f"a tool message's {part['type']!r} content cannot be sent")
        texts.append(part["text"])
    return "\n".join(texts)


# --- OpenAI -> LangChain -------------------------------------------------------------------


def ai_message_fields(message: Mapping[str, Any]) -> dict[str, Any]:
    """``AIMessage`` keyword arguments for a whole answer's ``choices[i].message``: content,
    tool calls (``invalid_tool_calls`` for arguments that are not a JSON object) and the
    reasoning in ``additional_kwargs["reasoning_content"]``."""
    fields: dict[str, Any] = {"content": message.get("content") or ""}
    if raw_calls := message.get("tool_calls"):
        calls, invalid = parse_tool_calls(raw_calls)
        fields["tool_calls"] = calls
        fields["invalid_tool_calls"] = invalid
    if reasoning := reasoning_of(message):
        fields["additional_kwargs"] = {"reasoning_content": reasoning}
    return fields


def parse_tool_calls(raw_calls: Sequence[Any]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """OpenAI ``tool_calls`` as LangChain tool calls and the ones whose arguments do not
    parse as a JSON object."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed is None:
            continue  # not a function call: nothing LangChain can represent
        if not isinstance(parsed["args"], dict):
            invalid.append(make_invalid_tool_call(raw, "arguments are not a JSON object"))
            continue
        calls.append(ToolCall(name=parsed["name"], args=parsed["args"], id=parsed["id"],
                              type="tool_call"))  # fmt: skip
    return calls, invalid


def reasoning_of(message: Mapping[str, Any]) -> str | None:
    """The reasoning text of a ``message`` or ``delta``, under either field name."""
    for field in REASONING_FIELDS:
        if text := message.get(field):
            return str(text)
    return None


class StreamedDelta:
    """The ``delta`` objects of one stream as ``AIMessageChunk`` fields.

    Tool-call deltas become ``tool_call_chunks``. llama.cpp repeats each call's id and name
    in every delta, OpenAI and vLLM send them once; LangChain concatenates the names of
    merged chunks, so a call's id and name are passed on only the first time they come.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str | None, str | None]] = {}

    def fields(self, delta: Mapping[str, Any]) -> dict[str, Any]:
        """``AIMessageChunk`` keyword arguments for one ``delta``."""
        fields: dict[str, Any] = {"content": delta.get("content") or ""}
        if raw_calls := delta.get("tool_calls"):
            fields["tool_call_chunks"] = [
                self._chunk(raw, position) for position, raw in enumerate(raw_calls)
            ]
        if reasoning := reasoning_of(delta):
            fields["additional_kwargs"] = {"reasoning_content": reasoning}
        return fields

    def _chunk(self, raw: Mapping[str, Any], position: int) -> ToolCallChunk:
        index = raw.get("index", position)
        function = raw.get("function") or {}
        call_id, name = raw.get("id"), function.get("name")
        seen_id, seen_name = self._seen.get(index, (None, None))
        self._seen[index] = (call_id or seen_id, name or seen_name)
        return tool_call_chunk(
            name=None if name == seen_name else name,
            args=function.get("arguments"),
            id=None if call_id == seen_id else call_id,
            index=index,
        )


# --- usage ---------------------------------------------------------------------------------


def usage_metadata(usage: Mapping[str, Any] | None) -> UsageMetadata | None:
    """LangChain's usage for OpenAI's ``usage`` object."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return UsageMetadata(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=int(usage.get("total_tokens") or prompt + completion),
    )


def openai_usage(usage: UsageMetadata | None) -> dict[str, int] | None:
    """OpenAI's ``usage`` object for LangChain's usage."""
    if not usage:
        return None
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }
