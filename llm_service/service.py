"""The service: what one chat-completion request does, independent of the web framework.

A request is normalised into a RAG input, the chain's prompt step builds the messages, and
the answer comes either straight from the upstream client (default: fastest) or through the
chain (when the model step is ChatOpenAI, or LangChain callbacks/tracing are configured).
Both ways give the same bytes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langsmith.utils import tracing_is_enabled

from llm_service.chain import bind_params, build_chain, build_model
from llm_service.errors import InvalidRequest
from llm_service.model import message_to_dict
from llm_service.prompting import PromptBuilder, PromptError, trailer_document
from llm_service.schemas import ChatRequest
from llm_service.settings import Settings
from llm_service.streaming import Answer, OpenAIChunkEncoder, relay_chain, relay_upstream
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.params import sampling_payload


@dataclass
class Prepared:
    """A validated request, ready to send."""

    request: ChatRequest
    messages: list[BaseMessage]
    params: dict[str, Any]
    prompt: str
    trailer: dict[str, Any] | None


class ChatService:
    """Answers chat-completion requests with one prompt builder and one model server."""

    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        prompt: PromptBuilder,
        *,
        through_chain: bool = False,
    ) -> None:
        self.settings = settings
        self.client = client
        self.prompt = prompt
        self.model = build_model(settings, client=client)
        self.chain = build_chain(settings, prompt=prompt, model=self.model)
        self.model_name = settings.model_name
        self.through_chain = (
            through_chain or settings.model_client != "fast" or tracing_is_enabled()
        )

    # --- preparing -----------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> Prepared:
        if request.messages:
            rag_input: dict[str, Any] = {
                "messages": [m.model_dump(exclude_none=True) for m in request.messages]
            }
            prompt_text = next(
                (m.content for m in reversed(request.messages) if m.role == "user"), ""
            )
        else:
            assert request.question is not None  # the schema guarantees one of the two
            rag_input = {
                "question": request.question,
                "reranked_docs": [d.model_dump() for d in request.reranked_docs],
                "history": [h.model_dump() for h in request.history],
            }
            prompt_text = request.question
        try:
            messages = self.prompt.build(rag_input)
        except PromptError as exc:
            raise InvalidRequest(str(exc), param="messages") from None
        return Prepared(
            request=request,
            messages=messages,
            params=self._params(request),
            prompt=prompt_text,
            trailer=self._trailer(request),
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

    @staticmethod
    def _trailer(request: ChatRequest) -> dict[str, Any] | None:
        if request.data is not None:
            return request.data
        if request.reranked_docs:
            return {
                "reranked_docs": [trailer_document(d.model_dump()) for d in request.reranked_docs]
            }
        return None

    def payload(self, prepared: Prepared) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "messages": [message_to_dict(m) for m in prepared.messages],
            **sampling_payload(self.settings.model_server, prepared.params),
        }

    def bound_model(self, prepared: Prepared) -> Runnable[LanguageModelInput, BaseMessage]:
        """The chain's model step with this request's sampling parameters bound."""
        return bind_params(self.settings, self.model, prepared.params)

    # --- answering -----------------------------------------------------------------------

    def stream(self, prepared: Prepared, answer: Answer) -> AsyncGenerator[bytes, None]:
        """SSE bytes of the answer (errors become an error event, then a clean end)."""
        options = prepared.request.stream_options
        encoder = OpenAIChunkEncoder(
            self.model_name, include_usage=bool(options and options.include_usage)
        )
        if self.through_chain:
            chunks: AsyncIterator[Any] = self.bound_model(prepared).astream(prepared.messages)
            return relay_chain(chunks, encoder, answer, prepared.trailer)
        payload = self.payload(prepared)
        payload["stream_options"] = {"include_usage": True}
        return relay_upstream(self.client.stream_chat(payload), encoder, answer, prepared.trailer)

    async def complete(self, prepared: Prepared) -> dict[str, Any]:
        """The whole answer as a GeneratedDoc (+ OpenAI chat.completion fields)."""
        text: str
        if self.through_chain:
            message = await self.bound_model(prepared).ainvoke(prepared.messages)
            text = str(message.text)
            finish = message.response_metadata.get("finish_reason")
            usage_md = getattr(message, "usage_metadata", None)
            usage = (
                {
                    "prompt_tokens": usage_md["input_tokens"],
                    "completion_tokens": usage_md["output_tokens"],
                    "total_tokens": usage_md["total_tokens"],
                }
                if usage_md
                else None
            )
        else:
            result = await self.client.chat(self.payload(prepared))
            choice = result["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason")
            usage = result.get("usage")
        return self.generated_doc(prepared, text, finish, usage)

    def generated_doc(
        self,
        prepared: Prepared,
        text: str,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        request = prepared.request
        return {
            "id": uuid.uuid4().hex,
            "text": text,
            "prompt": prepared.prompt,
            "stream": request.wants_stream(),
            "output_guardrail_params": request.output_guardrail_params,
            "data": prepared.trailer,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason or "stop",
                }
            ],
            "usage": usage,
        }
