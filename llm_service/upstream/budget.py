"""The prompt budget's view of the model server: its context window and its tokenizer.

``max_model_len`` comes from ``/v1/models`` (vLLM reports it), else from the
``LLM_MAX_MODEL_LEN`` setting (for the embedded server: its ``n_ctx``). Tokens are counted
by the server where it can (vLLM and Ray: ``/tokenize``; llama.cpp: ``/extras/tokenize/count``),
else left to the prompt step's local estimate; a server whose tokenizer fails is estimated
from then on. Implements ``llm_service.rag.budget.Budget`` without importing it (a Protocol).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from llm_service.errors import ServiceError
from llm_service.settings import ModelServer
from llm_service.upstream.client import UpstreamClient

log = logging.getLogger(__name__)

PROBE_RETRY_S = 30.0


class ServerBudget:
    """The context window and token counts of one model server."""

    def __init__(
        self,
        client: UpstreamClient,
        server: ModelServer,
        model: str,
        *,
        max_model_len: int | None,
        default_max_tokens: int,
    ) -> None:
        self.client = client
        self.server = server
        self.model = model
        self.fallback_max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.max_model_len: int | None = max_model_len
        self._probed_at: float | None = None
        self._learned = False
        self._server_counting = server in (ModelServer.VLLM, ModelServer.RAY, ModelServer.LLAMACPP)

    @property
    def counted_by(self) -> str:
        return "server" if self._server_counting else "estimate"

    async def window(self) -> int | None:
        now = time.monotonic()
        if self._learned or (self._probed_at and now - self._probed_at < PROBE_RETRY_S):
            return self.max_model_len
        self._probed_at = now
        try:
            models = await self.client.models()
        except ServiceError as exc:
            log.info("cannot learn max_model_len from the model server (%s)", exc.message)
            return self.max_model_len
        lengths = [
            m.get("max_model_len")
            for m in models.get("data", [])
            if isinstance(m, dict) and isinstance(m.get("max_model_len"), int)
        ]
        if lengths:
            self.max_model_len = lengths[0]
            log.info("model server context window: %d tokens", self.max_model_len)
        self._learned = True
        return self.max_model_len

    async def count(self, texts: Sequence[str]) -> list[int] | None:
        if self._server_counting:
            try:
                return list(await asyncio.gather(*(self._count_one(t) for t in texts)))
            except (ServiceError, KeyError, TypeError) as exc:
                log.warning("model server tokenizer failed (%s); estimating from now on", exc)
                self._server_counting = False
        return None

    async def _count_one(self, text: str) -> int:
        reply: Any
        if self.server is ModelServer.LLAMACPP:
            reply = await self.client.post_json("/extras/tokenize/count", {"input": text})
        else:
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
            reply = await self.client.post_json("/tokenize", body)
        return int(reply["count"])
