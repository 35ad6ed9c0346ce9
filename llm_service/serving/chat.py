"""What one chat-completion request does, independent of the web framework.

A request is normalised into the chain's input, the chain's prompt step builds the messages
(within the token budget), the policy decides between a stream and a whole answer, and the
answer comes either straight from the upstream client (default: fastest) or through the
chain's model step (when it is ChatOpenAI, or LangSmith tracing is on). Both ways give the
same bytes.
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
from llm_service.errors import InvalidRequest
from llm_service.observability import Observability, RequestRecord
from llm_service.protocol.opea import ChatRequest
from llm_service.protocol.openai import OpenAIChunkEncoder, finish_reason
from llm_service.protocol.reranked import reported_docs
from llm_service.rag import BuiltPrompt, PromptError, PromptStep
from llm_service.rag.documents import answer_data
from llm_service.serving.limits import Gate, check_input
from llm_service.serving.relay import Answer, ChainRelay, Relay, UpstreamRelay
from llm_service.settings import ModelServer, Settings
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.params import sampling_payload

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A validated request with its prompt built, ready to send."""

    request: ChatRequest
    built: BuiltPrompt
    params: dict[str, Any]
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
        if request.messages:
            inp = {"messages": [m.model_dump(exclude_none=True) for m in request.messages]}
            prompt_text = next(
                (m.content for m in reversed(request.messages) if m.role == "user"), ""
            )
        else:
            assert request.question is not None  # the schema guarantees one of the two
            inp = {
                "question": request.question,
                "reranked_docs": [d.model_dump() for d in request.reranked_docs],
                "history": [h.model_dump(exclude_none=True) for h in request.history],
                "prompt_template": request.prompt_template,
                "system_prompt_template": request.system_prompt_template,
                "user_prompt_template": request.user_prompt_template,
            }
            prompt_text = request.question
        try:
            built = await self.prompt.abuild(inp, params["max_tokens"])
        except PromptError as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
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

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        max_tokens = (
            request.max_tokens or request.max_new_tokens or self.settings.default_max_tokens
        )
        if max_tokens > self.settings.max_tokens_limit:
            name = "max_tokens" if request.max_tokens else "max_new_tokens"
            raise InvalidRequest(
                f"{name}: {max_tokens} is above the limit of {self.settings.max_tokens_limit}",
                param=name,
            )
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        return {
            "max_tokens": max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "typical_p": request.typical_p,
            "repetition_penalty": request.repetition_penalty,
            "stop": stop,
            "seed": request.seed,
        }

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
        )

    async def complete(
        self, prepared: Prepared, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The whole answer as a GeneratedDoc (+ OpenAI chat.completion fields)."""
        usage: Mapping[str, Any] | None
        if self.through_chain:
            message = await self.bound_model(prepared).ainvoke(prepared.built.messages)
            text = str(message.text)
            finish = message.response_metadata.get("finish_reason")
            usage = openai_usage(getattr(message, "usage_metadata", None))
        else:
            result = await self.client.chat(self.payload(prepared), headers)
            choice = result["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason")
            usage = result.get("usage")
        request = prepared.request
        answer = prepared.answer
        answer.text_parts.append(text)
        answer.finish_reason = finish
        answer.usage = dict(usage) if usage else None
        return {
            "id": uuid.uuid4().hex,
            "text": text,
            "prompt": prepared.prompt,
            "stream": request.wants_stream(),
            "output_guardrail_params": request.output_guardrail_params,
            "data": prepared.data(text),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason(finish),
                }
            ],
            "usage": usage,
        }
