"""LangServe-style routes for the chain, under ``LLM_LANGSERVE_PATH`` (default ``/llm``).

The wire format is LangServe's, so its client ``RemoteRunnable`` works unmodified:

- ``POST /invoke {input, config, kwargs}`` -> ``{output, metadata: {run_id, feedback_tokens}}``
- ``POST /batch {inputs, config, kwargs}`` -> ``{output: [...], metadata: {run_ids}}``
- ``POST /stream``, ``POST /stream_events`` -> SSE ``metadata`` (``/stream`` only, as in
  LangServe), ``data``..., then ``end``; a failure becomes ``error`` {status_code, message}
- ``GET /input_schema``, ``/output_schema``, ``/config_schema``; ``GET /playground``

The served chain is ``build_chain``'s composition (prompt step | model step, over the app's
one upstream client) with a few knobs made configurable per request through
``config.configurable``: ``prompt_template``, ``temperature``, ``top_p`` and ``max_tokens``.
Any other knob, a bad value, or a bad input is a 422 naming the field, before anything runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from langchain_core.messages import BaseMessage
from langchain_core.runnables import (
    ConfigurableField,
    Runnable,
    RunnableConfig,
    RunnableSerializable,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.background import BackgroundTask

from llm_service.api.opea import read_body, validation_error
from llm_service.errors import InvalidRequest
from llm_service.prompting import PromptError, PromptStep
from llm_service.rag_chain import RagChain
from llm_service.schemas import ChatMessage, HistoryItem, RerankedDoc
from llm_service.service import ChatService
from llm_service.streaming import lc_dumps, relay_langserve

KNOBS = ("prompt_template", "temperature", "top_p", "max_tokens")
"""The ``config.configurable`` keys a request may set; anything else is a 422."""

_CONFIG_KEYS = ("configurable", "tags", "metadata", "run_name")
"""Config keys taken from the client (the rest, e.g. ``recursion_limit``, are dropped)."""

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


# --- wire models ---------------------------------------------------------------------------


class ChainInput(BaseModel):
    """The chain's input: ready-made ``messages``, or ``question`` + ``reranked_docs`` +
    ``history`` for the service to build the prompt from (as on ``/v1/chat/completions``)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = Field(None, min_length=1)
    question: str | None = Field(None, min_length=1)
    reranked_docs: list[RerankedDoc] = Field(default_factory=list)
    history: list[HistoryItem] = Field(default_factory=list)
    prompt_template: str | None = Field(None, min_length=1, max_length=128)
    system_prompt_template: str | None = None
    user_prompt_template: str | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _lc_messages(cls, value: Any) -> Any:
        # RemoteRunnable sends LangChain messages as their dump: {"type": "human", ...}.
        if isinstance(value, list):
            return [
                {**m, "role": _ROLE_OF_TYPE.get(m["type"], m["type"])}
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

    model_config = ConfigDict(extra="forbid")

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


# --- the served chain ----------------------------------------------------------------------


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
        return self._call_with_config(lambda _: self.step._run(inp), input, config, "prompt")

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[BaseMessage]:
        inp = self._input(input, config)
        return await self._acall_with_config(
            lambda _: self.step._arun(inp), input, config, "prompt"
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


def _chain(request: Request) -> Runnable[dict[str, Any], BaseMessage]:
    state = request.app.state
    service: ChatService = state.service
    chain: Runnable[dict[str, Any], BaseMessage] | None = getattr(state, "langserve_chain", None)
    if chain is None or getattr(state, "langserve_service", None) is not service:
        chain = served_chain(service)
        state.langserve_chain, state.langserve_service = chain, service
    return chain


# --- validation ----------------------------------------------------------------------------


async def _parse(model: type[BaseModel], request: Request) -> Any:
    """The body as ``model``: 413 past ``LLM_MAX_BODY_BYTES``, 422 naming every bad field."""
    limit = request.app.state.settings.max_body_bytes
    body = await read_body(request.scope, request.receive, limit)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _input(service: ChatService, raw: Any, where: str = "input") -> dict[str, Any]:
    try:
        inp = ChainInput.model_validate(raw)
    except ValidationError as exc:
        err = validation_error(exc)
        raise InvalidRequest(
            "; ".join(f"{where}.{p}" for p in err.message.split("; ")),
            param=f"{where}.{err.param}",
        ) from None
    inp.check()
    if inp.prompt_template is not None:
        _check_template(service, inp.prompt_template, f"{where}.prompt_template")
    return inp.model_dump(exclude_none=True)


def _check_template(service: ChatService, name: str, param: str) -> None:
    try:
        service.prompt.library.get(name)
    except PromptError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param) from None


def _config(service: ChatService, raw: Mapping[str, Any], where: str = "config") -> RunnableConfig:
    """The client's config, with ``configurable`` limited to ``KNOBS`` and checked; a fresh
    run id."""
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
        err = validation_error(exc)
        param = f"{where}.configurable.{err.param}"
        raise InvalidRequest(
            "; ".join(f"{where}.configurable.{p}" for p in err.message.split("; ")), param=param
        ) from None
    limit = service.settings.max_tokens_limit
    if knobs.max_tokens is not None and knobs.max_tokens > limit:
        param = f"{where}.configurable.max_tokens"
        raise InvalidRequest(
            f"{param}: {knobs.max_tokens} is above the limit of {limit}", param=param
        )
    if knobs.prompt_template is not None:
        _check_template(service, knobs.prompt_template, f"{where}.configurable.prompt_template")
    config: dict[str, Any] = {k: raw[k] for k in _CONFIG_KEYS if raw.get(k) is not None}
    config["configurable"] = knobs.model_dump(exclude_none=True)
    config["run_id"] = uuid.uuid4()
    return cast(RunnableConfig, config)


def _invalid_input(exc: PromptError) -> InvalidRequest:
    where = "config.configurable" if exc.param == "max_tokens" else "input"
    return InvalidRequest(f"{where}.{exc}", param=f"{where}.{exc.param}")


async def _translated(items: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    """Prompt errors raised inside the chain are the client's: 422, not 502."""
    try:
        async for item in items:
            yield item
    except PromptError as exc:
        raise _invalid_input(exc) from None


@contextmanager
def _gate(service: ChatService) -> Iterator[None]:
    """One generation under ``LLM_MAX_CONCURRENT``, as on the chat route (429 past it)."""
    service.gate.enter()
    try:
        yield
    finally:
        service.gate.leave()


def _gated_sse(service: ChatService, frames: AsyncGenerator[bytes, None]) -> StreamingResponse:
    """An SSE response holding one place under the cap until the stream ends, however it ends."""
    service.gate.enter()
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            service.gate.leave()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()
            release()

    # The background task releases a stream that never started (the client left first).
    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
        background=BackgroundTask(release),
    )


def _json(obj: Any) -> Response:
    return Response(lc_dumps(obj), media_type="application/json")


def playground_html(path: str) -> str:
    """The playground page (package data), pointed at the OpenAI route relative to
    ``<path>/playground``, so that a reverse proxy's prefix keeps working."""
    page = resources.files("llm_service").joinpath("static/playground.html")
    api = "../" * path.count("/") + "v1/chat/completions"
    return page.read_text(encoding="utf-8").replace("__API_URL__", api)


# --- routes --------------------------------------------------------------------------------


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for a route that parses its raw body itself."""
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": schema}}


def build_router(path: str, *, playground: bool) -> APIRouter:
    """The routes under ``path`` (``LLM_LANGSERVE_PATH``)."""
    router = APIRouter(prefix=path, tags=["langserve"])

    @router.post(
        "/invoke",
        openapi_extra=_body(InvokeRequest),
        summary="Run the chain once: {input, config, kwargs} -> {output}",
    )
    async def invoke(request: Request) -> Response:
        service: ChatService = request.app.state.service
        body = await _parse(InvokeRequest, request)
        inp, config = _input(service, body.input), _config(service, body.config)
        try:
            with _gate(service):
                output = await _chain(request).ainvoke(inp, config)
        except PromptError as exc:
            raise _invalid_input(exc) from None
        run_id = str(config["run_id"])
        return _json({"output": output, "metadata": {"run_id": run_id, "feedback_tokens": []}})

    @router.post(
        "/batch",
        openapi_extra=_body(BatchRequest),
        summary="Run the chain on several inputs: {inputs, config}",
    )
    async def batch(request: Request) -> Response:
        service: ChatService = request.app.state.service
        body = await _parse(BatchRequest, request)
        inputs = [_input(service, x, f"inputs.{i}") for i, x in enumerate(body.inputs)]
        raw: Sequence[Mapping[str, Any]]
        if isinstance(body.config, list):
            if len(body.config) != len(inputs):
                raise InvalidRequest("config: one config per input, or one for all", param="config")
            raw = body.config
            configs = [_config(service, c, f"config.{i}") for i, c in enumerate(raw)]
        else:
            configs = [_config(service, body.config) for _ in inputs]
        try:
            with _gate(service):
                outputs = await _chain(request).abatch(inputs, configs)
        except PromptError as exc:
            raise _invalid_input(exc) from None
        run_ids = [str(c["run_id"]) for c in configs]
        responses = [{"run_id": r, "feedback_tokens": []} for r in run_ids]
        return _json({"output": outputs, "metadata": {"run_ids": run_ids, "responses": responses}})

    @router.post(
        "/stream",
        openapi_extra=_body(InvokeRequest),
        summary="Stream the answer's message chunks as LangServe SSE",
    )
    async def stream(request: Request) -> StreamingResponse:
        service: ChatService = request.app.state.service
        body = await _parse(InvokeRequest, request)
        inp, config = _input(service, body.input), _config(service, body.config)
        chunks = _translated(_chain(request).astream(inp, config))
        return _gated_sse(service, relay_langserve(chunks, run_id=str(config["run_id"])))

    @router.post(
        "/stream_events",
        openapi_extra=_body(StreamEventsRequest),
        summary="Stream the chain's runnable events (v2) as SSE",
    )
    async def stream_events(request: Request) -> StreamingResponse:
        service: ChatService = request.app.state.service
        body = await _parse(StreamEventsRequest, request)
        inp, config = _input(service, body.input), _config(service, body.config)
        events = _chain(request).astream_events(
            inp,
            config,
            version="v2",
            include_names=body.include_names,
            include_types=body.include_types,
            include_tags=body.include_tags,
            exclude_names=body.exclude_names,
            exclude_types=body.exclude_types,
            exclude_tags=body.exclude_tags,
        )
        return _gated_sse(service, relay_langserve(_translated(events)))

    @router.get("/input_schema", summary="JSON schema of the chain's input")
    async def input_schema() -> JSONResponse:
        return JSONResponse(ChainInput.model_json_schema())

    @router.get("/output_schema", summary="JSON schema of the chain's output")
    async def output_schema(request: Request) -> JSONResponse:
        model: Any = _chain(request).get_output_schema()
        return JSONResponse(model.model_json_schema())

    @router.get("/config_schema", summary="JSON schema of config.configurable (the knobs)")
    async def config_schema(request: Request) -> JSONResponse:
        model: Any = _chain(request).config_schema(include=["configurable"])
        return JSONResponse(model.model_json_schema())

    if playground:
        page = playground_html(path)

        @router.get("/playground", summary="The playground page", response_class=HTMLResponse)
        async def playground_page() -> HTMLResponse:
            return HTMLResponse(page)

    return router


__all__ = ["KNOBS", "ChainInput", "build_router", "served_chain"]
