"""LangServe's wire format, so that its client ``RemoteRunnable`` works unmodified.

- ``POST /invoke {input, config, kwargs}`` -> ``{output, metadata: {run_id, feedback_tokens}}``
- ``POST /batch {inputs, config, kwargs}`` -> ``{output: [...], metadata: {run_ids}}``
- ``POST /stream``, ``POST /stream_events`` -> SSE ``metadata`` (``/stream`` only, as in
  LangServe), ``data``..., then ``end``; a failure becomes ``error`` {status_code, message}
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llm_service.errors import InvalidRequest, ServiceError
from llm_service.protocol.opea import HistoryItem, RerankedDoc
from llm_service.protocol.openai import MAX_TEXT, ChatMessage, role_of

KNOBS = ("prompt_template", "temperature", "top_p", "max_tokens")
"""The ``config.configurable`` keys a request may set; anything else is a 422."""

CONFIG_KEYS = ("configurable", "tags", "metadata", "run_name")
"""Config keys taken from the client (the rest, e.g. ``recursion_limit``, are dropped)."""


class ChainInput(BaseModel):
    """The chain's input: ready-made ``messages``, or ``question`` + ``reranked_docs`` +
    ``history`` for the service to build the prompt from (as on ``/v1/chat/completions``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    messages: list[ChatMessage] | None = Field(None, min_length=1)
    question: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    reranked_docs: list[RerankedDoc] = Field(default_factory=list)
    history: list[HistoryItem] = Field(default_factory=list)
    prompt_template: str | None = Field(None, min_length=1, max_length=128)
    system_prompt_template: str | None = Field(None, max_length=MAX_TEXT)
    user_prompt_template: str | None = Field(None, max_length=MAX_TEXT)

    @field_validator("messages", mode="before")
    @classmethod
    def _lc_messages(cls, value: Any) -> Any:
        # RemoteRunnable sends LangChain messages as their dump: {"type": "human", ...}.
        if isinstance(value, list):
            return [
                {**m, "role": role_of(m["type"])}
                if isinstance(m, dict) and "role" not in m and "type" in m
                else m
                for m in value
            ]
        return value

    def check(self) -> None:
        if not self.messages and not self.question:
            raise InvalidRequest("input: give non-empty 'messages' or a 'question'", param="input")


class Knobs(BaseModel):
    """What ``config.configurable`` may set, with the same limits as the OpenAI route."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt_template: str | None = Field(None, min_length=1, max_length=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)


class InvokeRequest(BaseModel):
    """``{input, config, kwargs}``; ``kwargs`` (RemoteRunnable sends ``{}``) are ignored."""

    input: Any
    config: dict[str, Any] = Field(default_factory=dict)


class BatchRequest(BaseModel):
    inputs: list[Any] = Field(max_length=1000)
    config: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)


class StreamEventsRequest(InvokeRequest):
    include_names: list[str] | None = None
    include_types: list[str] | None = None
    include_tags: list[str] | None = None
    exclude_names: list[str] | None = None
    exclude_types: list[str] | None = None
    exclude_tags: list[str] | None = None


def _lc_default(obj: Any) -> Any:
    """LangChain objects (messages, prompt values, documents) as LangServe sends them: their
    pydantic dump, which ``RemoteRunnable``'s serializer turns back into objects."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump()
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__}
    return str(obj)


def lc_dumps(obj: Any) -> bytes:
    """JSON bytes of ``obj`` in LangServe's well-known-object form."""
    return orjson.dumps(obj, default=_lc_default)


class LangServeEncoder:
    """Bytes of LangServe's SSE: ``event: metadata`` (run_id), ``event: data`` per chunk or
    runnable event, ``event: error`` ({status_code, message}) and ``event: end``."""

    END = b"event: end\n\n"

    @staticmethod
    def metadata(run_id: str) -> bytes:
        return b"event: metadata\ndata: " + orjson.dumps({"run_id": run_id}) + b"\n\n"

    @staticmethod
    def data(obj: Any) -> bytes:
        return b"event: data\ndata: " + lc_dumps(obj) + b"\n\n"

    @staticmethod
    def error(exc: ServiceError) -> bytes:
        body = {"status_code": exc.status, "message": exc.message}
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
