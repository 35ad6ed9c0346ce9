"""LangChain messages and usage to and from OpenAI's wire shapes, written once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata

from llm_service.protocol.openai import MEDIA_PARTS, TEXT_PARTS, role_of


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """An OpenAI chat message dict for a LangChain message: its role (``developer`` kept),
    its content (a list of OpenAI parts as it is, else the text), name, tool calls."""
    role = message.additional_kwargs.get("__openai_role__") or role_of(message.type)
    content: Any = message.content
    if not (isinstance(content, list) and all(_is_part(p) for p in content)):
        content = message.text
    out: dict[str, Any] = {"role": role, "content": content}
    if message.name:
        out["name"] = message.name
    tool_call_id = getattr(message, "tool_call_id", None)
    if tool_call_id:
        out["tool_call_id"] = tool_call_id
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"id": call.get("id"), "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}
            for call in message.tool_calls
        ]  # fmt: skip
        if not out["content"]:
            out["content"] = None
    return out


def _is_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in (*TEXT_PARTS, *MEDIA_PARTS)


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
