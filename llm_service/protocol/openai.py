"""OpenAI's chat-completions wire format: messages, roles, errors and the chunk SSE.

``OpenAIChunkEncoder`` writes ``chat.completion.chunk`` SSE as the seed does: one frame per
content piece, a last content-less frame with the finish reason, ``data: [DONE]``, then the
``json: {...}`` trailer when there is one. Constant parts are encoded once per request; per
chunk only the content string is encoded, because this runs once per relayed token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from llm_service.errors import ServiceError

MAX_TEXT = 1_000_000  # characters in one message, question or document

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})

ROLE_OF_TYPE: dict[str, str] = {"system": "system", "human": "user", "ai": "assistant",
                                "tool": "tool"}  # fmt: skip
"""OpenAI's role for a LangChain message type (and LangChain's names accepted as roles)."""


def role_of(name: str) -> str:
    """The OpenAI role for a role or LangChain message type name (``human`` -> ``user``)."""
    return ROLE_OF_TYPE.get(name, name)


class ChatMessage(BaseModel):
    """One OpenAI-style chat message."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str = Field(max_length=MAX_TEXT)
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """Every error the service returns, 4xx or 5xx, has this shape."""

    error: ErrorBody


# Finish reasons outside OpenAI's set, as some servers report them (TGI's Messages API in
# versions before 2.1 says "eos_token"; its generate API says "stop_sequence").
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "end_turn": "stop"}


def finish_reason(reason: str | None) -> str:
    """OpenAI's finish reason for what a server reported (none: "stop")."""
    if not reason:
        return "stop"
    return FINISH_REASONS.get(reason, reason)


DONE = b"data: [DONE]\n\n"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class OpenAIChunkEncoder:
    """Bytes of the OpenAI chunk stream for one completion."""

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        head = orjson.dumps(
            {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
             "model": model}
        )[:-1]  # fmt: skip
        self._head = b"data: " + head + b',"choices":'
        self._content_head = self._head + b'[{"index":0,"delta":{"content":'
        self._content_tail = b'},"finish_reason":null}]}\n\n'
        self.include_usage = include_usage

    def content(self, text: str) -> bytes:
        return self._content_head + orjson.dumps(text) + self._content_tail

    def finish(self, reason: str | None, usage: Mapping[str, Any] | None) -> bytes:
        frame = (
            self._content_head
            + b'""},"finish_reason":'
            + orjson.dumps(finish_reason(reason))
            + b"}]}\n\n"
        )
        if self.include_usage and usage is not None:
            frame += self._head + b"[]," + orjson.dumps({"usage": usage})[1:] + b"\n\n"
        return frame

    @staticmethod
    def trailer(data: Mapping[str, Any] | None) -> bytes:
        return b"" if data is None else b"json: " + orjson.dumps(data) + b"\n\n"

    @staticmethod
    def error(exc: ServiceError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(exc.body()) + b"\n\n"
