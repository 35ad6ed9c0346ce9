"""The chain's default model step: a lean chat model over the upstream client.

``UpstreamChatModel`` is a real LangChain ``BaseChatModel`` (callbacks, tracing,
``astream_events``, ``with_retry``, ``with_fallbacks`` all work) that streams through
``UpstreamClient`` instead of the openai SDK, which costs several times less per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal, TypeVar, cast

import orjson
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import (
    convert_to_openai_function,
    convert_to_openai_tool,
)
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field

from llm_service.aio import run_sync
from llm_service.chain.messages import (
    StreamedDelta,
    ai_message_fields,
    message_to_dict,
    reasoning_of,
    usage_metadata,
)
from llm_service.context import upstream_headers
from llm_service.settings import ModelServer
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.params import FIELDS, SAMPLING_KEYS, sampling_payload, wire_messages
from llm_service.upstream.sse import Chunk

log = logging.getLogger(__name__)


def chunk_to_generation(chunk: Chunk, delta: StreamedDelta | None = None) -> ChatGenerationChunk:
    """One upstream ``chat.completion.chunk`` as a LangChain generation chunk.

    ``delta`` keeps what one stream's tool-call deltas need across chunks; without it the
    chunk is read on its own."""
    choices = chunk.get("choices")
    choice = choices[0] if choices else {}
    finish = choice.get("finish_reason")
    metadata: dict[str, Any] = {}
    if finish:
        metadata = {"finish_reason": finish, "model_name": chunk.get("model")}
    if logprobs := choice.get("logprobs"):
        metadata["logprobs"] = logprobs
    message = AIMessageChunk(
        **(delta or StreamedDelta()).fields(choice.get("delta") or {}),
        id=chunk.get("id"),
        response_metadata=metadata,
        usage_metadata=usage_metadata(chunk.get("usage")),
    )
    return ChatGenerationChunk(
        message=message, generation_info={"finish_reason": finish} if finish else None
    )


class _ChunkFactory:
    """Generation chunks for one stream, made cheaply.

    A plain content chunk (no finish reason, usage, logprobs, tool calls or reasoning:
    nearly all of them) is a copy of a validated template with its content replaced, made
    the way pydantic's ``model_copy`` makes one (new ``__dict__``, fields-set, extra and
    private slots) without its generic machinery, which costs several times more and runs
    once per token. Anything else is built and validated in full by ``chunk_to_generation``.
    """

    def __init__(self) -> None:
        self._message: AIMessageChunk | None = None
        self._generation: ChatGenerationChunk | None = None
        self._delta = StreamedDelta()

    def __call__(self, chunk: Chunk) -> ChatGenerationChunk:
        choices = chunk.get("choices")
        if not choices or chunk.get("usage"):
            return chunk_to_generation(chunk, self._delta)
        choice = choices[0]
        delta = choice.get("delta") or {}
        # A delta of content alone (vLLM, OpenAI, llama.cpp) is decided by its size; others
        # (TGI repeats the role, some servers send null fields) are looked into.
        if (
            choice.get("finish_reason")
            or choice.get("logprobs")
            or ((len(delta) != 1 or "content" not in delta) and _more_than_text(delta))
        ):
            return chunk_to_generation(chunk, self._delta)
        text = delta.get("content") or ""
        if self._generation is None or self._message is None:
            self._generation = chunk_to_generation(chunk, self._delta)
            self._message = cast(AIMessageChunk, self._generation.message)
            return self._generation
        message = _copy(self._message, {"content": text})
        return _copy(self._generation, {"message": message, "text": text})


def _more_than_text(delta: Mapping[str, Any]) -> bool:
    """The delta carries tool calls or reasoning, not only content and a role."""
    return bool(delta.get("tool_calls") or reasoning_of(delta))


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


REQUEST_KEYS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "max_completion_tokens",
)
"""OpenAI request fields, besides the sampling ones, that a bound model forwards."""


def server_payload(payload: dict[str, Any], server: ModelServer) -> dict[str, Any]:
    """``payload`` (OpenAI's request fields) in the form ``server`` takes it.

    - ``n`` other than 1 is refused: the model step answers with one message.
    - ``max_completion_tokens`` goes as ``max_tokens`` to servers without it (TGI,
      llama.cpp) and replaces ``max_tokens`` elsewhere.
    - The ``developer`` role is OpenAI's own; other servers' chat templates know ``system``.
    - llama.cpp's server (``--chat_format chatml-function-calling``) differs from OpenAI in
      six ways, each made up for here: it renders a content-part list as its Python text
      (a text-only list is joined), takes no null content (sent empty), shows the model the
      tools only inside a system message (an empty one is added when there is none),
      ignores tools without a tool choice (``auto`` is sent, OpenAI's default), returns no
      logprobs without ``top_logprobs`` (0 is sent, OpenAI's default), and has neither
      ``response_format: json_schema`` (sent as ``{"type": "json_object", "schema":
      ...}``, the same grammar-constrained output) nor ``tool_choice: required`` (sent as
      the one tool's name or, among several, as ``auto``, logged).
    """
    n = payload.pop("n", None)
    if n is not None and n != 1:
        raise ValueError(f"n={n}: the model step returns one message; only n=1 is supported")
    most = payload.pop("max_completion_tokens", None)
    if most is not None:
        key = "max_tokens" if server in (ModelServer.TGI, ModelServer.LLAMACPP) else None
        payload.pop("max_tokens", None)
        payload[key or "max_completion_tokens"] = most
    if server is not ModelServer.OPENAI:
        payload["messages"] = [
            {**m, "role": "system"} if m.get("role") == "developer" else m
            for m in payload["messages"]
        ]
    if server is ModelServer.LLAMACPP:
        _for_llamacpp(payload)
    return payload


def _for_llamacpp(payload: dict[str, Any]) -> None:
    payload["messages"] = [_joined(m) for m in payload["messages"]]
    if payload.get("logprobs") and payload.get("top_logprobs") is None:
        payload["top_logprobs"] = 0
    response_format = payload.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        payload["response_format"] = {"type": "json_object", "schema": schema or {}}
    tools = payload.get("tools")
    if not tools:
        return
    if not any(m.get("role") == "system" for m in payload["messages"]):
        # The chat format lists the tools inside the system message: without one the
        # model would never see their descriptions and parameters.
        payload["messages"].insert(0, {"role": "system", "content": ""})
    choice = payload.get("tool_choice")
    if choice is None:
        payload["tool_choice"] = "auto"
    elif choice == "required":
        if len(tools) == 1:
            name = tools[0]["function"]["name"]
            payload["tool_choice"] = {"type": "function", "function": {"name": name}}
        else:
            log.warning("llama.cpp cannot require one of several tools: sent tool_choice=auto")
            payload["tool_choice"] = "auto"


def _joined(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if content is None:  # an assistant's tool calls: llama.cpp wants a string
        return {**message, "content": ""}
    if isinstance(content, list) and all(p.get("type") == "text" for p in content):
        return {**message, "content": "\n".join(p["text"] for p in content)}
    return message


def _tool_choice(choice: dict[str, Any] | str | bool, names: list[str]) -> dict[str, Any] | str:
    """OpenAI's ``tool_choice`` for LangChain's forms of it."""
    if isinstance(choice, dict):
        return choice
    if choice is True or choice in ("any", "required"):
        return "required"
    if choice in ("auto", "none"):
        return choice
    if isinstance(choice, str) and choice in names:
        return {"type": "function", "function": {"name": choice}}
    raise ValueError(f"tool_choice {choice!r} names none of the bound tools {names}")


def json_schema_format(schema: dict[str, Any] | type, strict: bool | None) -> dict[str, Any]:
    """OpenAI's ``response_format`` of type ``json_schema`` for ``schema``."""
    function = convert_to_openai_function(schema, strict=strict)
    spec: dict[str, Any] = {"name": function["name"], "schema": function["parameters"]}
    if function.get("description"):
        spec["description"] = function["description"]
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def _whole_fields(result: Chunk) -> dict[str, Any]:
    """``AIMessage`` keyword arguments for a whole ``chat.completion``."""
    choice = result["choices"][0]
    metadata: dict[str, Any] = {
        "finish_reason": choice.get("finish_reason"),
        "model_name": result.get("model"),
    }
    if logprobs := choice.get("logprobs"):
        metadata["logprobs"] = logprobs
    return {
        **ai_message_fields(choice.get("message") or {}),
        "id": result.get("id"),
        "response_metadata": metadata,
        "usage_metadata": usage_metadata(result.get("usage")),
    }


def _whole_as_chunk(result: Chunk) -> ChatGenerationChunk:
    """A whole ``chat.completion`` as the one chunk of a stream."""
    fields = _whole_fields(result)
    calls = fields.pop("tool_calls", [])
    invalid = fields.pop("invalid_tool_calls", [])
    fields["tool_call_chunks"] = [
        tool_call_chunk(name=c["name"], args=orjson.dumps(c["args"]).decode(), id=c["id"],
                        index=i)
        for i, c in enumerate(calls)
    ] + [
        tool_call_chunk(name=c["name"], args=c["args"], id=c["id"], index=len(calls) + i)
        for i, c in enumerate(invalid)
    ]  # fmt: skip
    finish = fields["response_metadata"]["finish_reason"]
    return ChatGenerationChunk(
        message=AIMessageChunk(**fields),
        generation_info={"finish_reason": finish} if finish else None,
    )


class UpstreamChatModel(BaseChatModel):
    """Chat model for any OpenAI-compatible server, over the service's own upstream client
    (the lean streaming transport, orjson) instead of the openai SDK.

    Request fields set here are defaults; ``.bind(max_tokens=...)`` or call kwargs
    override them per request (``model=`` too). ``bind_tools`` and
    ``with_structured_output`` work as in langchain-openai's ``ChatOpenAI``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    client: UpstreamClient = Field(exclude=True)
    model_name: str
    server: ModelServer = ModelServer.OPENAI
    streaming: bool | None = None
    """True: ``invoke`` streams too (callbacks see each token). None, the default, leaves it
    to LangChain: stream when a streaming callback listens (``astream_events``). A bool here
    would be copied into every ``configurable_fields`` copy as if set by the caller, and
    ``astream_events`` through them would see no token."""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None
    user: str | None = None
    max_completion_tokens: int | None = None

    @property
    def _llm_type(self) -> str:
        return "llm-service-upstream"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "server": self.server.value}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.server.value
        return params

    def payload(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The upstream request body (without ``stream``) for these messages and kwargs."""
        params = {key: getattr(self, key) for key in SAMPLING_KEYS}
        params.update((k, v) for k, v in kwargs.items() if k in FIELDS)
        if stop is not None:
            params["stop"] = stop
        payload = {
            "model": kwargs.get("model") or self.model_name,
            "messages": wire_messages(self.server, [message_to_dict(m) for m in messages]),
            **sampling_payload(self.server, params),
        }
        for key in REQUEST_KEYS:
            value = kwargs[key] if key in kwargs else getattr(self, key, None)
            if value is not None:
                payload[key] = value
        return server_payload(payload, self.server)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        payload = self.payload(messages, stop, kwargs)
        if self.server is ModelServer.LLAMACPP and payload.get("tool_choice") == "auto":
            # llama-cpp-python's server fails a streamed answer once the model chooses a
            # tool by itself: ask for the whole answer and hand it on as one chunk.
            yield _whole_as_chunk(await self._call(payload))
            return
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
        result = await self._call(self.payload(messages, stop, kwargs))
        generation = ChatGeneration(
            message=AIMessage(**_whole_fields(result)),
            generation_info={"finish_reason": result["choices"][0].get("finish_reason")},
        )
        return ChatResult(
            generations=[generation],
            llm_output={"token_usage": result.get("usage"), "model_name": result.get("model")},
        )

    async def _call(self, payload: dict[str, Any]) -> Chunk:
        return await self.client.chat(payload, upstream_headers())

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` (anything ``convert_to_openai_tool`` takes) bound.

        ``tool_choice``: ``"auto"``, ``"none"``, ``"any"``/``"required"``/``True`` (some
        tool must be called), a tool's name or OpenAI's ``{"type": "function", ...}``.
        """
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        if tool_choice is not None and tool_choice is not False:
            names = [t["function"]["name"] for t in formatted if "function" in t]
            kwargs["tool_choice"] = _tool_choice(tool_choice, names)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """This model answering in ``schema``'s shape, parsed (a pydantic instance for a
        pydantic class, else a dict).

        ``method``: ``function_calling`` (a forced tool call), ``json_schema``
        (``response_format`` with the schema) or ``json_mode`` (``{"type":
        "json_object"}``: the prompt must ask for the JSON). ``include_raw``: a dict of
        ``raw`` (the message), ``parsed`` and ``parsing_error``.
        """
        pydantic_schema = isinstance(schema, type) and is_basemodel_subclass(schema)
        traced = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            # One call, forced by name: servers without parallel_tool_calls (TGI, llama.cpp)
            # make exactly one then, and refusing the field would refuse the whole call.
            single: dict[str, Any] = (
                {} if self.server in (ModelServer.TGI, ModelServer.LLAMACPP)
                else {"parallel_tool_calls": False}
            )  # fmt: skip
            llm = self.bind_tools(
                [schema], tool_choice=name, strict=strict,
                ls_structured_output_format=traced, **single, **kwargs,
            )  # fmt: skip
            if pydantic_schema:
                parser = PydanticToolsParser(tools=[cast(type, schema)], first_tool_only=True)
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                response_format = json_schema_format(schema, strict)
            else:
                response_format = {"type": "json_object"}
                traced["kwargs"] = {"method": method}
            llm = self.bind(
                response_format=response_format, ls_structured_output_format=traced, **kwargs
            )
            if pydantic_schema:
                parser = PydanticOutputParser(pydantic_object=cast(Any, schema))
            else:
                parser = JsonOutputParser()
        else:
            raise ValueError(
                f"method {method!r}: expected 'function_calling', 'json_schema' or 'json_mode'"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [unparsed], exception_key="parsing_error"
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
        # A private loop in a worker thread streams into a queue. A consumer that stops early
        # (``break``, ``close()``, an exception, a dropped generator) cancels the stream on
        # that loop: its connection closes, and the model server stops generating for nobody.
        items: queue.Queue[ChatGenerationChunk | BaseException | None] = queue.Queue()
        running: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = queue.Queue()

        async def pump() -> None:
            try:
                async for generation in self._astream(messages, stop, **kwargs):
                    items.put(generation)
            except asyncio.CancelledError:
                raise  # the consumer stopped: nobody waits for an item
            except BaseException as exc:  # re-raised in the caller's thread
                items.put(exc)
            finally:
                items.put(None)

        async def main() -> None:
            task = asyncio.create_task(pump())
            running.put((asyncio.get_running_loop(), task))
            with contextlib.suppress(asyncio.CancelledError):
                await task

        # In a copy of this context: the request id reaches the model server and the logs.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(asyncio.run, main()), name="llm-service-sync"
        )
        thread.start()
        loop, task = running.get()
        try:
            while (item := items.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: all done already
                loop.call_soon_threadsafe(task.cancel)
            thread.join()
