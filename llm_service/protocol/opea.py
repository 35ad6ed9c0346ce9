"""The seed's OPEA wire format: the request (LLMParamsDoc, plus the RAG form) and GeneratedDoc.

``ChatRequest`` accepts the seed's LLMParamsDoc (``messages`` + ``max_new_tokens`` ...),
OpenAI chat-completion requests (``max_tokens``, ``stop``, ``model``) and the RAG form
``{question, reranked_docs, history}``. Response models document the output in OpenAPI;
the hot path writes the same shapes with orjson instead of building models per chunk.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from llm_service.protocol.openai import MAX_TEXT, ChatMessage, StreamOptions, Usage
from llm_service.protocol.reranked import AnswerData


class HistoryTurn(BaseModel):
    """One earlier exchange, the seed's ChatHistory shape."""

    question: str = Field("", max_length=MAX_TEXT)
    answer: str = Field("", max_length=MAX_TEXT)


def _history_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "message" if "role" in value else "turn"
    return "message" if hasattr(value, "role") else "turn"


HistoryItem = Annotated[
    Annotated[ChatMessage, Tag("message")] | Annotated[HistoryTurn, Tag("turn")],
    Discriminator(_history_kind),
]
"""A history item: the seed's ``{question, answer}`` turn or an OpenAI message."""


class RerankedDoc(BaseModel):
    """A TextDoc-like reranked document: its text and metadata (source, citation, scores)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    text: str = Field(max_length=MAX_TEXT)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChatRequest(BaseModel):
    """Request of ``POST /v1/chat/completions``.

    Give either ``messages`` or ``question`` (with optional ``reranked_docs`` and
    ``history``). ``max_new_tokens`` (seed) and ``max_tokens`` (OpenAI) are synonyms.
    ``stream`` defaults to true as in the seed, except for OpenAI-style requests that name
    a ``model`` and omit it, which default to false as in the OpenAI API.
    """

    model_config = ConfigDict(
        extra="ignore",
        # NaN and infinities parse (pydantic reads NaN, Infinity), but are not JSON: 422.
        allow_inf_nan=False,
        # In the OpenAPI schema too (clients, fuzzers): one of the two inputs is required.
        json_schema_extra={"anyOf": [{"required": ["messages"]}, {"required": ["question"]}]},
    )

    messages: list[ChatMessage] | None = Field(None, max_length=10_000)
    question: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    reranked_docs: list[RerankedDoc] = Field(default_factory=list, max_length=10_000)
    history: list[HistoryItem] = Field(default_factory=list, max_length=10_000)
    prompt_template: str | None = Field(None, min_length=1, max_length=128)
    system_prompt_template: str | None = Field(None, max_length=MAX_TEXT)
    user_prompt_template: str | None = Field(None, max_length=MAX_TEXT)

    model: str | None = Field(None, max_length=512)
    max_new_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI
    stream: bool | None = None
    streaming: bool | None = Field(
        None, description="LLMParamsDoc's name for ``stream`` before OPEA 2.0: a synonym."
    )
    stream_options: StreamOptions | None = None

    data: dict[str, Any] | None = None
    output_guardrail_params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_input(self) -> ChatRequest:
        if self.messages is not None and not self.messages:
            raise ValueError("messages: must contain at least one message")
        if not self.messages and self.question is None:
            raise ValueError("messages: give 'messages' or 'question'")
        if (
            self.max_new_tokens is not None
            and self.max_tokens is not None
            and self.max_new_tokens != self.max_tokens
        ):
            raise ValueError("max_tokens: differs from max_new_tokens; give one of them")
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop: at most 16 stop sequences")
        return self

    @model_validator(mode="after")
    def _streaming_synonym(self) -> ChatRequest:
        # Pipelines built on LLMParamsDoc before its rename still send ``streaming``.
        if self.streaming is not None:
            if self.stream is not None and self.stream != self.streaming:
                raise ValueError("streaming: differs from stream; give one of them")
            self.stream = self.streaming
        return self

    def wants_stream(self) -> bool:
        if self.stream is not None:
            return self.stream
        return self.model is None


class GeneratedChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class GeneratedChoice(BaseModel):
    index: int = 0
    message: GeneratedChoiceMessage
    finish_reason: str | None


class GeneratedDoc(BaseModel):
    """Whole answer: the seed's GeneratedDoc plus the OpenAI ``chat.completion`` fields."""

    id: str
    text: str
    prompt: str
    stream: bool
    output_guardrail_params: dict[str, Any] | None = None
    data: AnswerData
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[GeneratedChoice]
    usage: Usage | None = None
