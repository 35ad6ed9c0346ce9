"""OpenAI's chat-completions wire format: messages, roles, errors and the chunk SSE.

``ChatMessage`` takes every message shape of OpenAI's API: content as a string or a list of
parts, the roles ``system``, ``developer``, ``user``, ``assistant`` (with ``tool_calls``,
``refusal``, null content), ``tool`` and the legacy ``function``.

``OpenAIChunkEncoder`` writes ``chat.completion.chunk`` SSE as the seed does: one frame per
content piece, a last content-less frame with the finish reason, ``data: [DONE]``, then the
``json: {...}`` trailer when there is one. Constant parts are encoded once per request; per
chunk only the content string is encoded, because this runs once per relayed token. Chunks
that carry more than content (tool calls, reasoning, other choices, logprobs) are written
whole by ``choices``, with the same head.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from llm_service.errors import ServiceError

MAX_TEXT = 1_000_000  # characters in one message, question or document

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

ROLE_OF_TYPE: dict[str, str] = {"system": "system", "human": "user", "ai": "assistant",
                                "tool": "tool", "function": "function"}  # fmt: skip
"""OpenAI's role for a LangChain message type (and LangChain's names accepted as roles)."""


def role_of(name: str) -> str:
    """The OpenAI role for a role or LangChain message type name (``human`` -> ``user``)."""
    return ROLE_OF_TYPE.get(name, name)


TEXT_PARTS = frozenset({"text", "refusal"})
"""Content parts that hold text (a refusal is the assistant's text too)."""
MEDIA_PARTS = ("image_url", "input_audio", "file", "audio_url", "video_url")
"""Other content parts: OpenAI's (image, audio, file) and vLLM's (audio and video by URL)."""


class TextPart(BaseModel):
    """``{"type": "text", "text": ...}``; other keys (cache hints) pass as they are."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class RefusalPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["refusal"]
    refusal: str = Field(max_length=MAX_TEXT)


class MediaPart(BaseModel):
    """An image, audio, file or video part: ``{"type": "image_url", "image_url": {...}}``.

    Its payload is the server's to read; it must be there, under the part's type."""

    model_config = ConfigDict(extra="allow")

    type: Literal["image_url", "input_audio", "file", "audio_url", "video_url"]

    @model_validator(mode="after")
    def _payload(self) -> MediaPart:
        if not (self.model_extra or {}).get(self.type):
            raise ValueError(f"the part needs its '{self.type}' object")
        return self


ContentPart = Annotated[TextPart | RefusalPart | MediaPart, Field(discriminator="type")]
Content = (
    Annotated[str, Field(max_length=MAX_TEXT)]
    | Annotated[list[ContentPart], Field(max_length=10_000)]
)

# Which parts each role may carry, as OpenAI's API says.
_ROLE_PARTS: dict[str, frozenset[str]] = {
    "user": frozenset({"text", *MEDIA_PARTS}),
    "assistant": TEXT_PARTS,
}


def content_text(content: Any) -> str:
    """The text of a message's content: a string as it is, the text (and refusal) parts of a
    list joined by newlines (as vLLM joins them for templates that take a string)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if isinstance(part, Mapping):
            text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        else:
            text = getattr(part, "text", None) or getattr(part, "refusal", None)
        if isinstance(text, str):
            texts.append(text)
    return "\n".join(texts)


class FunctionCall(BaseModel):
    """A function call: its name and its arguments as a JSON string."""

    name: str = Field(max_length=512)
    arguments: str = Field(max_length=MAX_TEXT)


class ToolCall(BaseModel):
    """One call in an assistant message's ``tool_calls`` (custom tools keep their keys)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=512)
    type: str = Field("function", max_length=64)
    function: FunctionCall | None = None


class ChatMessage(BaseModel):
    """One OpenAI chat message, in any of the API's shapes.

    Keys OpenAI's API does not define are kept in ``model_extra``, so that the service can
    refuse them (or ignore them, ``LLM_IGNORE_UNKNOWN_FIELDS``) instead of dropping them.
    """

    model_config = ConfigDict(extra="allow")

    role: Role
    content: Content | None
    name: str | None = Field(None, max_length=512)
    tool_calls: list[ToolCall] | None = Field(None, max_length=1024)
    tool_call_id: str | None = Field(None, max_length=512)
    refusal: str | None = Field(None, max_length=MAX_TEXT)
    function_call: FunctionCall | None = None  # legacy, before tool_calls
    audio: dict[str, Any] | None = None  # an earlier audio answer, by id
    # vLLM's name for an assistant message's reasoning, sent back in a conversation
    reasoning_content: str | None = Field(None, max_length=MAX_TEXT)
    reasoning: str | None = Field(None, max_length=MAX_TEXT)

    @model_validator(mode="before")
    @classmethod
    def _optional_content(cls, data: Any) -> Any:
        # An assistant message that calls tools (or a function) may leave its content out.
        if isinstance(data, dict) and "content" not in data and data.get("role") == "assistant":
            return {**data, "content": None}
        return data

    @field_validator("content")
    @classmethod
    def _parts_for_role(cls, content: Any, info: ValidationInfo) -> Any:
        if isinstance(content, list):
            role = info.data.get("role")
            allowed = _ROLE_PARTS.get(str(role), frozenset({"text"}))
            for i, part in enumerate(content):
                if part.type not in allowed:
                    raise ValueError(f"{i}: {part.type} parts are not allowed in {role} messages")
        elif content is None and info.data.get("role") not in ("assistant", "function"):
            raise ValueError(f"{info.data.get('role')} messages need content")
        return content

    @property
    def text(self) -> str:
        """The content's text (parts joined), for logs, limits and GeneratedDoc.prompt."""
        return content_text(self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    # OpenAI pads its own chunks with random text when this is on; this service writes its
    # chunks itself and has nothing to pad, so only "off" (or none) is accepted.
    include_obfuscation: Literal[False] | None = None


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

    def role(self) -> bytes:
        """The stream's first chunk, as OpenAI (and vLLM) send it: the role, empty content.
        SDKs build the final message's role from it (the openai SDK's streamed structured
        output fails without one)."""
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            + (b'"finish_reason":null}]}\n\n')
        )

    def choices(self, choices: Sequence[Mapping[str, Any]]) -> bytes:
        """One chunk holding ``choices`` as given (tool-call, reasoning or logprob deltas,
        choices past the first), under this completion's id, created and model."""
        return self._head + orjson.dumps(choices) + b"}\n\n"

    def finish(
        self,
        reason: str | None,
        usage: Mapping[str, Any] | None,
        others: Mapping[int, str | None] | None = None,
    ) -> bytes:
        """The end chunks: choice 0's finish reason, one chunk per other choice (``others``:
        index -> reason, for ``n`` > 1), then the usage chunk when it was asked for."""
        frame = (
            self._content_head
            + b'""},"finish_reason":'
            + orjson.dumps(finish_reason(reason))
            + b"}]}\n\n"
        )
        for index in sorted(others or ()):
            frame += self.choices(
                [{"index": index, "delta": {"content": ""},
                  "finish_reason": finish_reason((others or {})[index])}]
            )  # fmt: skip
        if self.include_usage and usage is not None:
            frame += self._head + b"[]," + orjson.dumps({"usage": usage})[1:] + b"\n\n"
        return frame

    @staticmethod
    def trailer(data: Mapping[str, Any] | None) -> bytes:
        return b"" if data is None else b"json: " + orjson.dumps(data) + b"\n\n"

    @staticmethod
    def error(exc: ServiceError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(exc.body()) + b"\n\n"
