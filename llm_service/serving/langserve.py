"""What one LangServe call does: check its input and config, run the chain, encode the result.

The served chain is ``build_chain``'s composition (prompt step | model step, over the app's
one upstream client) with a few knobs made configurable per request through
``config.configurable``: ``prompt_template``, ``temperature``, ``top_p`` and ``max_tokens``.
Any other knob, a bad value, or a bad input is a 422 naming the field, before anything runs.
Each call holds one place under ``LLM_MAX_CONCURRENT`` while it generates, as on the chat
route.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from langchain_core.messages import BaseMessage
from langchain_core.runnables import (
    ConfigurableField,
    Runnable,
    RunnableConfig,
    RunnableSerializable,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_service.chain import RagChain
from llm_service.errors import InvalidRequest, as_service_error
from llm_service.protocol.langserve import (
    CONFIG_KEYS,
    KNOBS,
    BatchRequest,
    ChainInput,
    InvokeRequest,
    Knobs,
    LangServeEncoder,
    StreamEventsRequest,
    lc_dumps,
)
from llm_service.protocol.validation import invalid_request
from llm_service.rag import PromptError, PromptStep
from llm_service.serving.chat import ChatService
from llm_service.serving.limits import require_finite

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class GatedStream:
    """An SSE body that holds one place under the cap until it ends, however it ends:
    ``release`` runs when the body finishes, and again (doing nothing) after the response,
    for a body that never started because the client left first."""

    def __init__(self, frames: Callable[[GatedStream], AsyncGenerator[bytes, None]]) -> None:
        self._release: Callable[[], None] | None = None
        self.frames = frames(self)

    def hold(self, release: Callable[[], None]) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class TemplatedPrompt(RunnableSerializable[dict[str, Any], list[BaseMessage]]):
    """The prompt step with its template as a field, so ``configurable_fields`` can choose it
    per request. A ``prompt_template`` in the input itself wins."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    step: PromptStep = Field(exclude=True)
    prompt_template: str | None = None
    name: str | None = "rag_prompt"

    def _input(self, inp: Mapping[str, Any], config: RunnableConfig | None) -> dict[str, Any]:
        out = dict(inp)
        if self.prompt_template is not None and not out.get("prompt_template"):
            out["prompt_template"] = self.prompt_template
        # The token budget leaves room for the answer the request asked for.
        max_tokens = ((config or {}).get("configurable") or {}).get("max_tokens")
        if max_tokens is not None and "max_tokens" not in out:
            out["max_tokens"] = max_tokens
        return out

    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[BaseMessage]:
        inp = self._input(input, config)
        return self._call_with_config(lambda _: self.step.messages(inp), input, config, "prompt")

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[BaseMessage]:
        inp = self._input(input, config)
        return await self._acall_with_config(
            lambda _: self.step.amessages(inp), input, config, "prompt"
        )


def served_chain(service: ChatService) -> Runnable[dict[str, Any], BaseMessage]:
    """``build_chain``'s chain (``RagChain``: prompt step then model step, one run named
    ``llm_service``) over the service's client, with ``KNOBS`` configurable."""
    prompt = TemplatedPrompt(step=service.prompt).configurable_fields(
        prompt_template=ConfigurableField(
            id="prompt_template",
            name="Prompt template",
            description="Name of a template in the prompt library (e.g. default, zh, pl).",
        )
    )
    model = service.model.configurable_fields(
        temperature=ConfigurableField(
            id="temperature", name="Temperature", description="Sampling temperature, 0 to 2."
        ),
        top_p=ConfigurableField(id="top_p", name="Top p", description="Nucleus sampling, (0, 1]."),
        max_tokens=ConfigurableField(
            id="max_tokens", name="Max tokens", description="Most tokens to generate."
        ),
    )
    return RagChain(prompt=prompt, model=model)


class LangServeCalls:
    """The LangServe routes' work for one ``ChatService``; the routes only read and write."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.chain = served_chain(service)

    # --- one prologue for every call ------------------------------------------------------

    @staticmethod
    def parse(model: type[M], body: bytes) -> M:
        """The body as ``model``, or a 422 naming every bad field (NaN or an infinity
        anywhere in it too, free-form ``input``, ``config`` and metadata included)."""
        try:
            request = model.model_validate_json(body)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False)) from None
        for name, value in request:
            require_finite(name, value)
        return request

    def checked(
        self, raw_input: Any, raw_config: Mapping[str, Any], where: str = "", config_at: str = ""
    ) -> tuple[dict[str, Any], RunnableConfig]:
        """One call's input and config, checked (422 naming the field), with a fresh run id.
        ``where`` / ``config_at`` locate them in a batch (``inputs.2``, ``config.2``)."""
        return (
            self._input(raw_input, where or "input"),
            self._config(raw_config, config_at or "config"),
        )

    def _input(self, raw: Any, where: str) -> dict[str, Any]:
        try:
            inp = ChainInput.model_validate(raw)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False), where=where) from None
        inp.check()
        if inp.prompt_template is not None:
            self._check_template(inp.prompt_template, f"{where}.prompt_template")
        out = inp.model_dump(exclude_none=True)
        try:  # the request's own templates and the prompt's size, before anything runs
            self.service.prompt.check(out)
        except PromptError as exc:
            raise InvalidRequest(f"{where}.{exc}", param=f"{where}.{exc.param}") from None
        return out

    def _check_template(self, name: str, param: str) -> None:
        try:
            self.service.prompt.library.get(name)
        except PromptError as exc:
            raise InvalidRequest(f"{param}: {exc}", param=param) from None

    def _config(self, raw: Mapping[str, Any], where: str) -> RunnableConfig:
        """The client's config, with ``configurable`` limited to ``KNOBS`` and checked."""
        configurable = raw.get("configurable") or {}
        if not isinstance(configurable, Mapping):
            raise InvalidRequest(f"{where}.configurable: must be an object", param=where)
        unknown = sorted(set(configurable) - set(KNOBS))
        if unknown:
            param = f"{where}.configurable.{unknown[0]}"
            raise InvalidRequest(
                f"{param}: not a configurable knob (allowed: {', '.join(KNOBS)})", param=param
            )
        try:
            knobs = Knobs.model_validate(configurable)
        except ValidationError as exc:
            at = f"{where}.configurable"
            raise invalid_request(exc.errors(include_url=False), where=at) from None
        limit = self.service.settings.max_tokens_limit
        if knobs.max_tokens is not None and knobs.max_tokens > limit:
            param = f"{where}.configurable.max_tokens"
            raise InvalidRequest(
                f"{param}: {knobs.max_tokens} is above the limit of {limit}", param=param
            )
        if knobs.prompt_template is not None:
            self._check_template(knobs.prompt_template, f"{where}.configurable.prompt_template")
        config: dict[str, Any] = {k: raw[k] for k in CONFIG_KEYS if raw.get(k) is not None}
        config["configurable"] = knobs.model_dump(exclude_none=True)
        config["run_id"] = uuid.uuid4()
        return cast(RunnableConfig, config)

    @contextmanager
    def _generating(self) -> Iterator[None]:
        """One place under ``LLM_MAX_CONCURRENT`` (429 past it); prompt errors raised inside
        the chain are the client's: 422, not 502."""
        gate = self.service.gate
        gate.enter()
        try:
            yield
        except PromptError as exc:
            raise _invalid_input(exc) from None
        finally:
            gate.leave()

    # --- the calls ------------------------------------------------------------------------

    async def invoke(self, body: bytes) -> bytes:
        request = self.parse(InvokeRequest, body)
        inp, config = self.checked(request.input, request.config)
        with self._generating():
            output = await self.chain.ainvoke(inp, config)
        run_id = str(config["run_id"])
        return lc_dumps({"output": output, "metadata": {"run_id": run_id, "feedback_tokens": []}})

    async def batch(self, body: bytes) -> bytes:
        request = self.parse(BatchRequest, body)
        raw: Sequence[Mapping[str, Any]]
        if isinstance(request.config, list):
            if len(request.config) != len(request.inputs):
                raise InvalidRequest("config: one config per input, or one for all", param="config")
            raw = request.config
        else:
            raw = [request.config] * len(request.inputs)
        checked = [
            self.checked(x, c, f"inputs.{i}", f"config.{i}" if raw is request.config else "")
            for i, (x, c) in enumerate(zip(request.inputs, raw, strict=True))
        ]
        inputs, configs = [i for i, _ in checked], [c for _, c in checked]
        with self._generating():
            outputs = await self.chain.abatch(inputs, configs)
        run_ids = [str(c["run_id"]) for c in configs]
        responses = [{"run_id": r, "feedback_tokens": []} for r in run_ids]
        return lc_dumps(
            {"output": outputs, "metadata": {"run_ids": run_ids, "responses": responses}}
        )

    def stream(self, body: bytes) -> GatedStream:
        """LangServe SSE of the chain's message chunks (checked before the first byte)."""
        request = self.parse(InvokeRequest, body)
        inp, config = self.checked(request.input, request.config)
        chunks = self.chain.astream(inp, config)
        return self._events(chunks, run_id=str(config["run_id"]))

    def stream_events(self, body: bytes) -> GatedStream:
        """LangServe SSE of the chain's runnable events (v2)."""
        request = self.parse(StreamEventsRequest, body)
        inp, config = self.checked(request.input, request.config)
        events = self.chain.astream_events(
            inp,
            config,
            version="v2",
            include_names=request.include_names,
            include_types=request.include_types,
            include_tags=request.include_tags,
            exclude_names=request.exclude_names,
            exclude_types=request.exclude_types,
            exclude_tags=request.exclude_tags,
        )
        return self._events(events)

    def _events(self, items: AsyncIterator[Any], *, run_id: str | None = None) -> GatedStream:
        """``metadata`` first when ``run_id`` is given, one ``data`` event per item, then
        ``end``; any failure becomes an ``error`` event with its status code. The call holds
        its place under the cap from now until the stream ends, however it ends."""
        gate = self.service.gate
        gate.enter()  # 429 now, before the response starts
        redact = self.service.client.redactor
        stream = GatedStream(lambda held: _encoded(items, run_id, held.release, redact))
        stream.hold(gate.leave)
        return stream

    # --- schemas --------------------------------------------------------------------------

    @staticmethod
    def input_schema() -> dict[str, Any]:
        return ChainInput.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        model: Any = self.chain.get_output_schema()
        return cast(dict[str, Any], model.model_json_schema())

    def config_schema(self) -> dict[str, Any]:
        model: Any = self.chain.config_schema(include=["configurable"])
        return cast(dict[str, Any], model.model_json_schema())


async def _encoded(
    items: AsyncIterator[Any],
    run_id: str | None,
    release: Callable[[], None],
    redact: Callable[[str], str],
) -> AsyncGenerator[bytes, None]:
    encoder = LangServeEncoder
    try:
        if run_id is not None:
            yield encoder.metadata(run_id)
        async for item in items:
            yield encoder.data(item)
        yield encoder.END
    except PromptError as exc:
        yield encoder.error(_invalid_input(exc))
    except Exception as exc:
        err = as_service_error(exc, redact)
        log.warning("LangServe stream failed: %s", err.message)
        yield encoder.error(err)
    finally:
        release()
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _invalid_input(exc: PromptError) -> InvalidRequest:
    where = "config.configurable" if exc.param == "max_tokens" else "input"
    return InvalidRequest(f"{where}.{exc}", param=f"{where}.{exc.param}")
