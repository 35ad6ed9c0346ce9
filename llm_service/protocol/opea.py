"""The seed's OPEA wire format: the request (LLMParamsDoc, plus the RAG form) and GeneratedDoc.

``ChatRequest`` accepts the seed's LLMParamsDoc (``messages`` + ``max_new_tokens`` ...) and
the other fields of OPEA's LLMParamsDoc, every field of OpenAI's chat-completions request,
and the RAG form ``{question, reranked_docs, history}``. Anything else is kept in
``model_extra``: the serving layer passes vLLM's own fields on to vLLM and refuses the rest
(``upstream.params`` says which server takes which field). Response models document the
output in OpenAPI; the hot path writes the same shapes with orjson instead of building
models per chunk.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from llm_service.protocol.openai import (
    MAX_TEXT,
    ChatMessage,
    FunctionCall,
    StreamOptions,
    ToolCall,
    Usage,
)
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


class FunctionDefinition(BaseModel):
    """A function the model may call: its name, description and JSON-schema parameters."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=512)
    description: str | None = Field(None, max_length=MAX_TEXT)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of ``tools``: ``{"type": "function", "function": {...}}`` (OpenAI's custom
    tools keep their own keys)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("function", max_length=64)
    function: FunctionDefinition | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field("response", max_length=512)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}`` (vLLM's
    ``structural_tag`` and llama.cpp's ``schema`` key pass as they are)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required when type is 'json_schema'")
        return self


ToolChoice = Literal["none", "auto", "required"] | dict[str, Any]


class ChatRequest(BaseModel):
    """Request of ``POST /v1/chat/completions``.

    Give ``messages``, ``question`` (with optional ``reranked_docs`` and ``history``), or
    OPEA's ``query`` (one user message). ``max_new_tokens`` (seed), ``max_tokens`` and
    ``max_completion_tokens`` (OpenAI) are synonyms. ``stream`` (``streaming`` in OPEA)
    defaults to true as in the seed, except for OpenAI-style requests that name a ``model``
    and omit it, which default to false as in the OpenAI API.

    Every other field of OpenAI's chat-completions request is taken and reaches the model
    server under the name it uses, or the request is refused with a 422 naming the field
    and the server (see docs/capabilities.md). vLLM's own fields (``guided_json``,
    ``min_p``, ``chat_template_kwargs``...) go to vLLM and Ray as they are. Any other field
    is a 422, unless ``LLM_IGNORE_UNKNOWN_FIELDS`` is set.
    """

    model_config = ConfigDict(
        extra="allow",
        # NaN and infinities parse (pydantic reads NaN, Infinity), but are not JSON: 422.
        allow_inf_nan=False,
        # In the OpenAPI schema too (clients, fuzzers): one of the inputs is required.
        json_schema_extra={
            "anyOf": [{"required": ["messages"]}, {"required": ["question"]},
                      {"required": ["query"]}]
        },
    )  # fmt: skip

    messages: list[ChatMessage] | None = Field(None, max_length=10_000)
    question: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    reranked_docs: list[RerankedDoc] = Field(default_factory=list, max_length=10_000)
    history: list[HistoryItem] = Field(default_factory=list, max_length=10_000)
    prompt_template: str | None = Field(None, min_length=1, max_length=128)
    system_prompt_template: str | None = Field(None, max_length=MAX_TEXT)
    user_prompt_template: str | None = Field(None, max_length=MAX_TEXT)

    # --- OpenAI's chat-completions request (and the seed's sampling knobs) ------------------
    model: str | None = Field(None, max_length=512)
    max_new_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=10_000
    )
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI
    stream: bool | None = None
    streaming: bool | None = Field(
        None, description="LLMParamsDoc's name for ``stream`` before OPEA 2.0: a synonym."
    )
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, max_length=512)
    reasoning_effort: str | None = Field(None, max_length=32)
    functions: list[FunctionDefinition] | None = Field(None, max_length=128)  # legacy tools
    function_call: Literal["none", "auto"] | dict[str, Any] | None = None  # legacy tool_choice
    # OpenAI's platform: audio answers, stored completions, caching, tiers, web search...
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = Field(None, max_length=8)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=32)
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = Field(None, max_length=512)
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = Field(None, max_length=32)
    safety_identifier: str | None = Field(None, max_length=512)
    verbosity: str | None = Field(None, max_length=32)
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    # --- OPEA's LLMParamsDoc, beyond the above ------------------------------------------------
    query: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    language: str | None = Field(None, max_length=32)
    input_guardrail_params: dict[str, Any] | None = None
    id: str | None = Field(None, max_length=512)
    chat_template: str | None = Field(None, max_length=MAX_TEXT)  # also vLLM's (Jinja)
    documents: list[Any] | None = Field(None, max_length=10_000)  # also vLLM's

    data: dict[str, Any] | None = None
    output_guardrail_params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_input(self) -> ChatRequest:
        if self.messages is not None and not self.messages:
            raise ValueError("messages: must contain at least one message")
        if not self.messages and self.question is None and self.query is None:
            raise ValueError("messages: give 'messages' or 'question'")
        if self.query is not None and (self.messages or self.question is not None):
            raise ValueError("query: give one of 'messages', 'question' and 'query'")
        given = {
            name: value
            for name, value in (("max_new_tokens", self.max_new_tokens),
                                ("max_tokens", self.max_tokens),
                                ("max_completion_tokens", self.max_completion_tokens))
            if value is not None
        }  # fmt: skip
        if len(set(given.values())) > 1:
            names = list(given)
            raise ValueError(f"{names[-1]}: differs from {names[0]}; give one of them")
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop: at most 16 stop sequences")
        if self.language not in (None, "auto"):
            raise ValueError(
                "language: only 'auto' is taken; choose the prompt's language with prompt_template"
            )
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
        if self.streaming is not None:
            return self.streaming
        return self.model is None

    @property
    def max_output_tokens(self) -> int | None:
        """The answer's token limit, under whichever of its three names it came."""
        return self.max_completion_tokens or self.max_tokens or self.max_new_tokens


class GeneratedChoiceMessage(BaseModel):
    """The answer's message as the model server sent it (tool calls, reasoning...)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    reasoning_content: str | None = None
    refusal: str | None = None


class GeneratedChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int = 0
    message: GeneratedChoiceMessage
    logprobs: dict[str, Any] | None = None
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
