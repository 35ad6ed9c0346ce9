"""LangChain messages and usage to and from OpenAI's wire shapes, written once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata

from llm_service.protocol.openai import role_of


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """An OpenAI chat message dict for a LangChain message."""
    out: dict[str, Any] = {"role": role_of(message.type), "content": message.text}
    tool_call_id = getattr(message, "tool_call_id", None)
    if tool_call_id:
        out["tool_call_id"] = tool_call_id
    return out


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
