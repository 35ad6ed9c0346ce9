"""The chain's default model step: a lean chat model over the upstream client.

``UpstreamChatModel`` is a real LangChain ``BaseChatModel`` (callbacks, tracing,
``astream_events``, ``with_retry``, ``with_fallbacks`` all work) that streams through
``UpstreamClient`` instead of the openai SDK, which costs several times less per token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, TypeVar, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field

from llm_service.aio import run_sync
from llm_service.chain.messages import message_to_dict, usage_metadata
from llm_service.context import upstream_headers
from llm_service.settings import ModelServer
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.params import FIELDS, SAMPLING_KEYS, sampling_payload, wire_messages
from llm_service.upstream.sse import Chunk


def chunk_to_generation(chunk: Chunk) -> ChatGenerationChunk:
    """One upstream ``chat.completion.chunk`` as a LangChain generation chunk."""
    choices = chunk.get("choices")
    choice = choices[0] if choices else {}
    delta = choice.get("delta") or {}
    finish = choice.get("finish_reason")
    metadata: dict[str, Any] = {}
    if finish:
        metadata = {"finish_reason": finish, "model_name": chunk.get("model")}
    message = AIMessageChunk(
        content=delta.get("content") or "",
        id=chunk.get("id"),
        response_metadata=metadata,
        usage_metadata=usage_metadata(chunk.get("usage")),
    )
    return ChatGenerationChunk(
        message=message, generation_info={"finish_reason": finish} if finish else None
    )


class _ChunkFactory:
    """Generation chunks for one stream, made cheaply.

    A plain content chunk (no finish reason, no usage: nearly all of them) is a copy of a
    validated template with its content replaced, made the way pydantic's ``model_copy``
    makes one (new ``__dict__``, fields-set, extra and private slots) without its generic
    machinery, which costs several times more and runs once per token. Anything else is
    built and validated in full by ``chunk_to_generation``.
    """

    def __init__(self) -> None:
        self._message: AIMessageChunk | None = None
        self._generation: ChatGenerationChunk | None = None

    def __call__(self, chunk: Chunk) -> ChatGenerationChunk:
        choices = chunk.get("choices")
        if not choices or choices[0].get("finish_reason") or chunk.get("usage"):
            return chunk_to_generation(chunk)
        text = (choices[0].get("delta") or {}).get("content") or ""
        if self._generation is None or self._message is None:
            self._generation = chunk_to_generation(chunk)
            self._message = cast(AIMessageChunk, self._generation.message)
            return self._generation
        message = _copy(self._message, {"content": text})
        return _copy(self._generation, {"message": message, "text": text})


_new = object.__new__
_set = object.__setattr__
M = TypeVar("M", bound=BaseModel)


def _copy(template: M, update: dict[str, Any]) -> M:
    """A shallow copy of pydantic model ``template`` with ``update`` applied, unvalidated."""
    copy = _new(type(template))
    _set(copy, "__dict__", {**template.__dict__, **update})
    _set(copy, "__pydantic_fields_set__", set(template.__pydantic_fields_set__))
    extra = template.__pydantic_extra__
    _set(copy, "__pydantic_extra__", dict(extra) if extra is not None else None)
    private = template.__pydantic_private__
    _set(copy, "__pydantic_private__", dict(private) if private is not None else None)
    return copy


class UpstreamChatModel(BaseChatModel):
    """Chat model for any OpenAI-compatible server, over the service's own upstream client
    (the lean streaming transport, orjson) instead of the openai SDK.

    Sampling fields set here are defaults; ``.bind(max_tokens=...)`` or call kwargs
    override them per request.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    client: UpstreamClient = Field(exclude=True)
    model_name: str
    server: ModelServer = ModelServer.OPENAI
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "llm-service-upstream"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "server": self.server.value}

    def payload(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The upstream request body (without ``stream``) for these messages and kwargs."""
        params = {key: getattr(self, key) for key in SAMPLING_KEYS}
        params.update((k, v) for k, v in kwargs.items() if k in FIELDS)
        if stop is not None:
            params["stop"] = stop
        return {
            "model": self.model_name,
            "messages": wire_messages(self.server, [message_to_dict(m) for m in messages]),
            **sampling_payload(self.server, params),
        }

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        payload = self.payload(messages, stop, kwargs)
        payload["stream_options"] = {"include_usage": True}
        # BaseChatModel.astream reports each chunk to the callbacks (on_llm_new_token).
        make = _ChunkFactory()
        async for batch in self.client.stream_chat(payload, upstream_headers()):
            for chunk in batch:
                yield make(chunk)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await self.client.chat(self.payload(messages, stop, kwargs), upstream_headers())
        choice = result["choices"][0]
        finish = choice.get("finish_reason")
        message = AIMessage(
            content=(choice.get("message") or {}).get("content") or "",
            id=result.get("id"),
            response_metadata={"finish_reason": finish, "model_name": result.get("model")},
            usage_metadata=usage_metadata(result.get("usage")),
        )
        return ChatResult(
            generations=[
                ChatGeneration(message=message, generation_info={"finish_reason": finish})
            ],
            llm_output={"token_usage": result.get("usage"), "model_name": result.get("model")},
        )

    # The sync API runs the async one on a private loop in a worker thread, so it also
    # works where a loop is already running (Jupyter).

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return run_sync(lambda: self._agenerate(messages, stop, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        items: queue.Queue[ChatGenerationChunk | BaseException | None] = queue.Queue()

        async def pump() -> None:
            try:
                async for generation in self._astream(messages, stop, **kwargs):
                    items.put(generation)
            except BaseException as exc:  # re-raised in the caller's thread
                items.put(exc)
            finally:
                items.put(None)

        thread = threading.Thread(target=asyncio.run, args=(pump(),), name="llm-service-sync")
        thread.start()
        while (item := items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()
