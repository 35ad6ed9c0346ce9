"""A chat-model face on a text-completion LLM (``LLM_MODEL_API=completions``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult

from llm_service.chain.messages import usage_metadata
from llm_service.settings import ModelServer
from llm_service.upstream.params import OPENAI_FIELDS, SAMPLING_KEYS, sampling_payload


def messages_to_prompt(messages: list[BaseMessage]) -> str:
    """One text prompt for a completions endpoint: the messages' texts, blank-line separated
    (the prompt step's system part then its user part, as the seed sent them)."""
    return "\n\n".join(m.text for m in messages if m.text)


class CompletionsChatModel(BaseChatModel):
    """A chat-model face on a text-completion LLM (``VLLMOpenAI``), so that the chain, the
    route and the encoders work the same with ``LLM_MODEL_API=completions``. Sampling
    parameters are bound like ``UpstreamChatModel``'s; OpenAI's go as they are, top_k and
    repetition_penalty in ``extra_body`` (vLLM accepts them there)."""

    llm: BaseLLM

    @property
    def _llm_type(self) -> str:
        return "llm-service-completions"

    def _params(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        params = {k: v for k, v in kwargs.items() if k in SAMPLING_KEYS}
        if stop is not None:
            params["stop"] = stop
        payload = sampling_payload(ModelServer.VLLM, params)
        out = {k: payload.pop(k) for k in OPENAI_FIELDS if k in payload}
        if payload:
            out["extra_body"] = payload
        return out

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        params = self._params(stop, kwargs)
        async for piece in self.llm._astream(messages_to_prompt(messages), **params):
            finish = (piece.generation_info or {}).get("finish_reason")
            metadata = {"finish_reason": finish} if finish else {}
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=piece.text, response_metadata=metadata),
                generation_info={"finish_reason": finish} if finish else None,
            )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await self.llm._agenerate(
            [messages_to_prompt(messages)], **self._params(stop, kwargs)
        )
        return _chat_result(result)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = self.llm._generate([messages_to_prompt(messages)], **self._params(stop, kwargs))
        return _chat_result(result)


def _chat_result(result: LLMResult) -> ChatResult:
    generation = result.generations[0][0]
    finish = (generation.generation_info or {}).get("finish_reason")
    usage = (result.llm_output or {}).get("token_usage") or {}
    message = AIMessage(
        content=generation.text,
        response_metadata={"finish_reason": finish},
        usage_metadata=usage_metadata(usage),
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info={"finish_reason": finish})],
        llm_output=result.llm_output,
    )
