"""What one chat-completion request does, independent of the web framework.

A request is normalised into the chain's input, the chain's prompt step builds the messages
(within the token budget), the policy decides between a stream and a whole answer, and the
answer comes either straight from the upstream client (default: fastest) or through the
chain's model step (when it is ChatOpenAI, or LangSmith tracing is on). Both ways give the
same bytes.

Every field of the request meant for the model server goes through the capability table
(``upstream.params``) before anything is sent: it reaches the server under the name the
server takes, or the request is refused with a 422 naming it. Whole answers carry the
server's choices as it sent them (all ``n``, tool calls, reasoning, logprobs).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langsmith.utils import tracing_is_enabled

from llm_service.chain import bind_params, build_model
from llm_service.chain.messages import openai_usage
from llm_service.errors import InvalidRequest, as_service_error
from llm_service.observability import Observability, RequestRecord
from llm_service.protocol.opea import ChatRequest
from llm_service.protocol.openai import ChatMessage, OpenAIChunkEncoder, finish_reason
from llm_service.protocol.reranked import reported_docs
from llm_service.rag import BuiltPrompt, PromptError, PromptStep
from llm_service.rag.documents import answer_data
from llm_service.serving.limits import Gate, check_input, check_json
from llm_service.serving.relay import Answer, ChainRelay, Relay, UpstreamRelay
from llm_service.settings import ModelServer, Settings
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.params import (
    FIELDS,
    SAMPLING_KEYS,
    VLLM_EXTRAS,
    is_neutral,
    sampling_payload,
    wire_messages,
)

log = logging.getLogger(__name__)

_LIMITS = frozenset({"max_tokens", "max_completion_tokens"})  # resolved into one limit

CHAIN_SHAPES = frozenset({
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "n",
    "logprobs", "top_logprobs", "audio", "modalities", "prompt_logprobs", "return_token_ids",
    "return_tokens_as_token_ids", "return_prompt_text",
})  # fmt: skip
"""Fields that ask for more than text back (tool calls, more choices, logprobs, audio): the
chain's model step relays text only, so they are refused on that route."""
_CHAIN = "the LangChain model step (LLM_MODEL_CLIENT=chatopenai, LLM_ROUTE_VIA_CHAIN or tracing)"


@dataclass
class Prepared:
    """A validated request with its prompt built, ready to send."""

    request: ChatRequest
    built: BuiltPrompt
    params: dict[str, Any]  # every field for the model server, under our names
    prompt: str  # the question (or last user message), as the seed's GeneratedDoc.prompt
    answer: Answer = field(default_factory=Answer)  # filled while answering (logs, metrics)
    reported: list[dict[str, Any]] | None = None  # data.reranked_docs, converted

    def trailer(self, answer_text: str) -> dict[str, Any] | None:
        """The stream's ``json:`` trailer, as the reference writes it.

        Seed form: ``{"reranked_docs": [...]}`` (``data.reranked_docs`` converted) when the
        request had ``data``, else none. RAG form: always, with the documents used, the
        citation ids the answer used and what the token budget did."""
        request = self.request
        if request.question is None or request.messages:
            return None if request.data is None else {"reranked_docs": self.reported or []}
        context = self.built.context.as_dict() if self.built.context is not None else None
        return answer_data(self.reported, self.built.docs, answer_text, context)

    def data(self, answer_text: str) -> dict[str, Any]:
        """GeneratedDoc ``data``: the trailer, ``{"reranked_docs": []}`` when a stream would
        have none (the reference sends it on every whole answer)."""
        trailer = self.trailer(answer_text)
        return {"reranked_docs": []} if trailer is None else trailer


# What the reference sent the model server when LLMParamsDoc left them out. Its default
# max_new_tokens is LLM_DEFAULT_MAX_TOKENS' default; its other defaults (top_k, typical_p,
# repetition_penalty) it never sent.
REFERENCE_SAMPLING: dict[str, float] = {"temperature": 0.01, "top_p": 0.95}


def reference_defaults(
    params: dict[str, Any], request: ChatRequest, server: ModelServer
) -> dict[str, Any]:
    """``params`` with the reference's sampling defaults for what the request left out, so a
    pipeline that relied on them gets the answers it got before.

    Only for the seed's and the RAG form's requests: one that names a ``model`` is
    OpenAI-style and gets the model server's defaults, as from OpenAI. Nor towards OpenAI
    itself, whose reasoning models refuse any temperature but their own."""
    if request.model is not None or server is ModelServer.OPENAI:
        return params
    missing = {k: v for k, v in REFERENCE_SAMPLING.items() if params.get(k) is None}
    return {**params, **missing} if missing else params


@dataclass
class Streamed:
    """A streamed answer past its point of no return: the first frame is ready."""

    first: bytes
    relay: Relay


class ChatService:
    """Answers chat-completion requests with one prompt step and one model server."""

    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        prompt: PromptStep,
        *,
        model: BaseChatModel | None = None,
        observability: Observability | None = None,
    ) -> None:
        self.settings = settings
        self.observability = observability or Observability()
        self.client = client
        self.prompt = prompt
        self.model = model or build_model(settings, client=client)
        self.model_name = settings.model_name
        self.through_chain = (
            settings.route_via_chain
            or settings.model_client != "fast"
            or settings.model_api == "completions"  # the VLLMOpenAI model step
            or tracing_is_enabled()
        )
        self.gate = Gate(settings.max_concurrent)  # concurrent requests, for backpressure
        # The header whose value keeps a session on one replica (ASGI's lower-case name).
        self.session_header = settings.routing_session_header.lower().encode("latin-1")

    async def answer(
        self, request: ChatRequest, record: RequestRecord
    ) -> dict[str, Any] | Streamed:
        """The whole request: its prompt, the stream-or-whole policy, the model call.

        Returns the GeneratedDoc of a whole answer, or a started stream. Raises a
        ``ServiceError`` (a status code for the client) for anything that fails before the
        first frame of a stream."""
        obs = self.observability
        with obs.prompt_span(record):
            prepared = await self.prepare(request)
        record.answer, record.context = prepared.answer, prepared.built.context
        if self.streams(request):
            headers = obs.start_generation(record, stream=True)
            relay = self.stream(prepared, record.on_batch, headers)
            try:
                first = await relay.start()
            except BaseException:
                await relay.aclose()
                raise
            return Streamed(first, relay)
        headers = obs.start_generation(record, stream=False)
        return await self.complete(prepared, headers)

    def streams(self, request: ChatRequest) -> bool:
        """Stream when the request asks to, unless the settings say whole answers only (the
        seed's LLM_DISABLE_STREAMING, or an output guard after us that streams itself)."""
        settings = self.settings
        return (
            request.wants_stream()
            and not settings.disable_streaming
            and not settings.output_guard_exists
        )

    # --- preparing -----------------------------------------------------------------------

    async def prepare(self, request: ChatRequest) -> Prepared:
        check_input(request, self.settings)  # LLM_MAX_MESSAGES/_DOCUMENTS/_INPUT_CHARS: 422
        reported = reported_docs(request.data)  # 400 before any model work, as the reference
        params = reference_defaults(self._params(request), request, self.settings.model_server)
        inp: dict[str, Any]
        messages = request.messages
        if messages is None and request.query is not None:  # OPEA's query: one user message
            messages = [ChatMessage(role="user", content=request.query)]
        if messages:
            inp = {"messages": [m.model_dump(exclude_none=True) for m in messages]}
            for i, message in enumerate(inp["messages"]):
                if not isinstance(message.get("content"), str) or len(message) > 2:
                    check_json(f"messages.{i}", message)  # parts, calls: free-form inside
            prompt_text = next((m.text for m in reversed(messages) if m.role == "user"), "")
        else:
            assert request.question is not None  # the schema guarantees one of the inputs
            inp = {
                "question": request.question,
                "reranked_docs": [d.model_dump() for d in request.reranked_docs],
                "history": [
                    {"role": h.role, "content": h.text}
                    if isinstance(h, ChatMessage)
                    else h.model_dump(exclude_none=True)
                    for h in request.history
                ],
                "prompt_template": request.prompt_template,
                "system_prompt_template": request.system_prompt_template,
                "user_prompt_template": request.user_prompt_template,
            }
            prompt_text = request.question
        try:
            built = await self.prompt.abuild(inp, self._limit(request))
        except PromptError as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        built.messages = self._messages(built.messages)
        context = built.context
        if context is not None and (context.docs_dropped or context.history_dropped):
            log.info(
                "token budget: kept %d docs (dropped %d), dropped %d history turns, "
                "truncated=%s, prompt ~%d tokens of %s",
                context.docs_used, context.docs_dropped, context.history_dropped,
                context.truncated_doc, context.prompt_tokens, context.budget,
            )  # fmt: skip
        return Prepared(
            request=request, built=built, params=params, prompt=prompt_text, reported=reported
        )

    def _limit(self, request: ChatRequest) -> int:
        """The answer's token limit (422 above ``LLM_MAX_TOKENS_LIMIT``)."""
        max_tokens = request.max_output_tokens or self.settings.default_max_tokens
        if max_tokens > self.settings.max_tokens_limit:
            name = next(
                name
                for name in ("max_completion_tokens", "max_tokens", "max_new_tokens")
                if getattr(request, name)
            )
            raise InvalidRequest(
                f"{name}: {max_tokens} is above the limit of {self.settings.max_tokens_limit}",
                param=name,
            )
        return max_tokens

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        """The request's fields for the model server, under our names, checked against the
        capability table (422 naming each field the server, or the chain, cannot take)."""
        self._check_unknown(request)
        names = (request.model_fields_set & FIELDS) - _LIMITS
        params: dict[str, Any] = request.model_dump(include=names, by_alias=True, exclude_none=True)
        extra = request.model_extra
        if extra:
            params.update((k, v) for k, v in extra.items() if k in VLLM_EXTRAS)
        limit = self._limit(request)
        if request.max_completion_tokens is not None and self.settings.model_api == "chat":
            params["max_completion_tokens"] = limit  # sent under the name it came with
        else:
            params["max_tokens"] = limit
        if isinstance(request.stop, str):
            params["stop"] = [request.stop]  # TGI takes a list only
        for name, value in params.items():
            if not isinstance(value, str | bool):  # vLLM's fields come unchecked, as JSON
                check_json(name, value)
        self._check_route(params)
        sampling_payload(self.settings.model_server, params)  # 422 for what the server lacks
        return params

    def _check_unknown(self, request: ChatRequest) -> None:
        """422 for fields neither OpenAI's API, OPEA's LLMParamsDoc nor vLLM defines, as
        OpenAI words it, unless ``LLM_IGNORE_UNKNOWN_FIELDS`` lets them be ignored."""
        if self.settings.ignore_unknown_fields:
            return
        unknown = [k for k in request.model_extra or () if k not in VLLM_EXTRAS]
        for i, message in enumerate(request.messages or ()):
            unknown.extend(f"messages.{i}.{key}" for key in message.model_extra or ())
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            raise InvalidRequest(
                f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}",
                param=unknown[0],
            )

    def _check_route(self, params: dict[str, Any]) -> None:
        """422 for fields the chain's model step cannot carry: its answer is text only, and
        the completions API (``LLM_MODEL_API=completions``) takes the sampling knobs only."""
        if not self.through_chain:
            return
        if self.settings.model_api == "completions":
            allowed, why = frozenset(SAMPLING_KEYS), "LLM_MODEL_API=completions"
        else:
            allowed, why = FIELDS - CHAIN_SHAPES, _CHAIN
        refused = [
            name for name, value in params.items()
            if name not in allowed and not is_neutral(name, value)
        ]  # fmt: skip
        if refused:
            raise InvalidRequest(
                "; ".join(f"{name}: not supported with {why}" for name in refused),
                param=refused[0],
            )

    def _messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages as the model server takes them (``developer`` as ``system``, text
        parts joined...; 422 for parts it cannot take), checked for the chain's limits."""
        server = self.settings.model_server
        if self.through_chain and self.settings.model_api == "completions":
            for i, message in enumerate(messages):
                content = message.get("content")
                if isinstance(content, list) and any(p.get("type") != "text" for p in content):
                    param = f"messages.{i}.content"
                    raise InvalidRequest(
                        f"{param}: only text parts with LLM_MODEL_API=completions", param=param
                    )
                if message.get("tool_calls") or message.get("function_call"):
                    param = f"messages.{i}.tool_calls"
                    raise InvalidRequest(
                        f"{param}: not supported with LLM_MODEL_API=completions", param=param
                    )
        return wire_messages(server, messages)

    def payload(self, prepared: Prepared) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "messages": prepared.built.messages,
            **sampling_payload(self.settings.model_server, prepared.params),
        }

    def bound_model(self, prepared: Prepared) -> Runnable[LanguageModelInput, BaseMessage]:
        """The chain's model step with this request's sampling parameters bound."""
        return bind_params(self.settings, self.model, prepared.params)

    # --- answering -----------------------------------------------------------------------

    def stream(
        self,
        prepared: Prepared,
        on_batch: Callable[[], object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Relay:
        """The relay of the answer as SSE: straight from the model server, or through the
        chain's model step. ``on_batch`` runs once per relayed batch; ``headers`` go to the
        model server (request id, trace context)."""
        options = prepared.request.stream_options
        encoder = OpenAIChunkEncoder(
            self.model_name, include_usage=bool(options and options.include_usage)
        )
        answer = prepared.answer
        if self.through_chain:
            chunks: AsyncIterator[Any] = self.bound_model(prepared).astream(prepared.built.messages)
            return ChainRelay(
                chunks, encoder, answer, prepared.trailer, on_batch, self.client.redactor
            )
        payload = self.payload(prepared)
        payload["stream_options"] = {"include_usage": True}
        return UpstreamRelay(
            lambda: self.client.open_stream(payload, headers),
            encoder,
            answer,
            prepared.trailer,
            on_batch,
            self.client.redactor,
            rich=prepared.params.get("n", 1) > 1 or bool(prepared.params.get("logprobs")),
        )

    async def complete(
        self, prepared: Prepared, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The whole answer as a GeneratedDoc (+ OpenAI chat.completion fields): the server's
        choices as it sent them, ``text`` the first one's content."""
        usage: Mapping[str, Any] | None
        extra: dict[str, Any] = {}
        if self.through_chain:
            try:
                message = await self.bound_model(prepared).ainvoke(prepared.built.messages)
            except Exception as exc:
                # ChatOpenAI's and VLLMOpenAI's openai errors: the defined statuses the lean
                # client answers with, as a stream's relay gives them.
                raise as_service_error(exc, self.client.redactor) from None
            text = str(message.text)
            finish = message.response_metadata.get("finish_reason")
            usage = openai_usage(getattr(message, "usage_metadata", None))
            choices = [_choice(0, {"role": "assistant", "content": text}, finish)]
        else:
            result = await self.client.chat(self.payload(prepared), headers)
            choices = [_upstream_choice(i, c) for i, c in enumerate(result["choices"])]
            first = choices[0]
            text = first["message"].get("content") or ""
            finish = first["finish_reason"]
            usage = result.get("usage")
            # What else the server answered with (system_fingerprint, vLLM's prompt_logprobs
            # or prompt_token_ids when asked for): passed on, under ours.
            extra = {k: v for k, v in result.items() if k not in _OURS}
        request = prepared.request
        answer = prepared.answer
        answer.text_parts.append(text)
        answer.finish_reason = finish
        answer.usage = dict(usage) if usage else None
        return {
            **extra,
            "id": uuid.uuid4().hex,
            "text": text,
            "prompt": prepared.prompt,
            "stream": request.wants_stream(),
            "output_guardrail_params": request.output_guardrail_params,
            "data": prepared.data(text),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": usage,
        }


_OURS = frozenset({"id", "text", "prompt", "stream", "output_guardrail_params", "data",
                   "object", "created", "model", "choices", "usage"})  # fmt: skip
"""Keys of a whole answer that are this service's, whatever the server sent under them."""


def _choice(index: int, message: Mapping[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "message": message, "logprobs": None,
            "finish_reason": finish_reason(finish)}  # fmt: skip


def _upstream_choice(position: int, choice: Mapping[str, Any]) -> dict[str, Any]:
    """One of the server's choices in OpenAI's shape: its message as sent (tool calls,
    reasoning, refusal), its logprobs, OpenAI's name for its finish reason."""
    message = dict(choice.get("message") or {})
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    out = {**choice, **_choice(choice.get("index", position), message, choice.get("finish_reason"))}
    out["logprobs"] = choice.get("logprobs")
    return out
