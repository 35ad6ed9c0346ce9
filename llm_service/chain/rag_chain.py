"""``RagChain``: the prompt step then the model step, as one LangChain Runnable.

It behaves like ``prompt | model`` (a ``RunnableSequence``): one chain run named
``llm_service`` with the two steps as child runs, so callbacks, tracing, ``astream_events``,
``with_retry``, ``with_fallbacks``, ``bind`` and ``|`` all work. It differs in one place,
the stream: a ``RunnableSequence`` pulls every chunk of every step through a new asyncio task
(to carry its config in a context variable) and through each step's ``atransform``, which
costs several times the rest of the path per chunk (docs/performance.md). ``RagChain.astream``
builds the prompt once and then iterates the model's ``astream`` directly, passing the child
config explicitly instead of through the context.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableSequence,
    RunnableSerializable,
)
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    patch_config,
)
from langchain_core.runnables.graph import Graph
from langchain_core.runnables.utils import ConfigurableFieldSpec, get_unique_config_specs
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from pydantic import BaseModel, ConfigDict

RagInput = Mapping[str, Any]


class RagChain(RunnableSerializable[RagInput, BaseMessage]):
    """``prompt | model`` with a lean stream. Build it with ``llm_service.build_chain``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    prompt: Runnable[RagInput, list[BaseMessage]]
    """Turns the input into chat messages (template, documents, history, token budget)."""
    model: Runnable[LanguageModelInput, BaseMessage]
    """The chat model step, with any bound sampling parameters."""
    name: str | None = "llm_service"

    # --- schemas and graph: those of the equivalent sequence --------------------------------

    @property
    def InputType(self) -> Any:
        return self.prompt.InputType

    @property
    def OutputType(self) -> Any:
        return self.model.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return cast(type[BaseModel], self.prompt.get_input_schema(config))

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return cast(type[BaseModel], self.model.get_output_schema(config))

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return get_unique_config_specs([*self.prompt.config_specs, *self.model.config_specs])

    def get_graph(self, config: RunnableConfig | None = None) -> Graph:
        return RunnableSequence(self.prompt, self.model).get_graph(config)

    # --- whole answers -----------------------------------------------------------------------

    def invoke(
        self, input: RagInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> BaseMessage:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(
        self,
        input: RagInput,
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> BaseMessage:
        messages = self.prompt.invoke(input, _step(config, run_manager, 1))
        return self.model.invoke(messages, _step(config, run_manager, 2), **kwargs)

    async def ainvoke(
        self, input: RagInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> BaseMessage:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _ainvoke(
        self,
        input: RagInput,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> BaseMessage:
        messages = await self.prompt.ainvoke(input, _step(config, run_manager, 1))
        return await self.model.ainvoke(messages, _step(config, run_manager, 2), **kwargs)

    # --- streams -----------------------------------------------------------------------------

    async def astream(
        self, input: RagInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[BaseMessage]:
        config = ensure_config(config)
        manager = get_async_callback_manager_for_config(config)
        run = await manager.on_chain_start(
            None,
            cast(dict[str, Any], input),
            name=config.get("run_name") or self.get_name(),
            run_id=config.pop("run_id", None),
        )
        chunks: list[BaseMessage] = []
        try:
            messages = await self.prompt.ainvoke(input, _step(config, run, 1))
            stream = self.model.astream(messages, _step(config, run, 2), **kwargs)
            tap = _stream_handler(run.handlers)
            if tap is not None:  # astream_events / astream_log: report this run's chunks
                stream = tap.tap_output_aiter(run.run_id, stream)
            async with aclosing(cast(AsyncGenerator[BaseMessage, None], stream)) as chunks_in:
                async for chunk in chunks_in:  # closed at once if our consumer stops
                    chunks.append(chunk)
                    yield chunk
        except BaseException as exc:
            await run.on_chain_error(exc)
            raise
        await run.on_chain_end(_merged(chunks) if run.handlers else None)

    def stream(
        self, input: RagInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[BaseMessage]:
        config = ensure_config(config)
        manager = get_callback_manager_for_config(config)
        run = manager.on_chain_start(
            None,
            cast(dict[str, Any], input),
            name=config.get("run_name") or self.get_name(),
            run_id=config.pop("run_id", None),
        )
        chunks: list[BaseMessage] = []
        try:
            messages = self.prompt.invoke(input, _step(config, run, 1))
            stream = self.model.stream(messages, _step(config, run, 2), **kwargs)
            tap = _stream_handler(run.handlers)
            if tap is not None:
                stream = tap.tap_output_iter(run.run_id, stream)
            with closing(cast(Generator[BaseMessage, None, None], stream)) as chunks_in:
                for chunk in chunks_in:
                    chunks.append(chunk)
                    yield chunk
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        run.on_chain_end(_merged(chunks) if run.handlers else None)


def _step(
    config: RunnableConfig,
    run: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun,
    index: int,
) -> RunnableConfig:
    """The config of child step ``index``, tagged as ``RunnableSequence`` tags its steps."""
    return patch_config(config, callbacks=run.get_child(f"seq:step:{index}"))


def _stream_handler(handlers: Sequence[Any]) -> _StreamingCallbackHandler[Any] | None:
    for handler in handlers:
        if isinstance(handler, _StreamingCallbackHandler):
            return handler
    return None


def _merged(chunks: list[BaseMessage]) -> BaseMessage | None:
    """The whole message of a stream, for the chain run's end callback."""
    if not chunks:
        return None
    first = chunks[0]
    if isinstance(first, BaseMessageChunk) and len(chunks) > 1:
        return first + chunks[1:]
    return first
