"""Limits on what one request may take: the concurrency cap, the input limits, and the
error a request still running gets when a shutdown cuts it.

All of it is per-request work (a counter, a sum of lengths); nothing here runs per relayed
chunk.
"""

from __future__ import annotations

import asyncio
import math

import orjson

from llm_service.errors import InvalidRequest, ServiceError
from llm_service.protocol.opea import ChatRequest
from llm_service.settings import Settings


def shutting_down() -> ServiceError:
    """What a request still running when the drain timeout ends gets."""
    return ServiceError(
        "the service is shutting down; retry on another instance",
        status=503,
        type="service_unavailable",
        retry_after="1",
    )


class Gate:
    """Caps concurrent chat requests: past ``limit`` the next one gets 429 at once.

    No queue: a caller (or its load balancer) retries after ``Retry-After`` seconds, or on
    another instance, instead of waiting here without bound. ``limit`` 0 means no cap; the
    count is kept anyway, so shutdown can wait for in-flight requests.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """Count one more request, or raise 429 when the cap is reached."""
        if self.limit and self.active >= self.limit:
            raise ServiceError(
                f"too many concurrent requests (limit {self.limit}); retry later",
                status=429,
                type="rate_limit_error",
                retry_after="1",
            )
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self._idle.set()

    async def wait_idle(self, limit_s: float) -> bool:
        """True when no request is in flight within ``limit_s`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), limit_s)
        except TimeoutError:
            return False
        return True


def check_input(request: ChatRequest, settings: Settings) -> None:
    """422 naming the field when a request holds more than the configured limits."""
    messages = len(request.messages or ()) + len(request.history)
    if messages > settings.max_messages:
        field = "messages" if request.messages else "history"
        raise InvalidRequest(
            f"{field}: {messages} messages and history turns; the limit is {settings.max_messages}",
            param=field,
        )
    docs = len(request.reranked_docs)
    if docs > settings.max_documents:
        raise InvalidRequest(
            f"reranked_docs: {docs} documents; the limit is {settings.max_documents}",
            param="reranked_docs",
        )
    check_json("data", request.data)
    check_json("output_guardrail_params", request.output_guardrail_params)
    for i, doc in enumerate(request.reranked_docs):
        if doc.metadata:
            check_json(f"reranked_docs.{i}.metadata", doc.metadata)
    sizes = {
        "messages": sum(len(m.text) for m in request.messages or ()),
        "question": len(request.question or ""),
        "query": len(request.query or ""),
        "reranked_docs": sum(len(d.text) for d in request.reranked_docs),
        "history": sum(
            len(getattr(h, "text", "")) + len(getattr(h, "question", ""))
            + len(getattr(h, "answer", ""))
            for h in request.history
        ),
        # Template text becomes prompt text too (the prompt step bounds what it renders to).
        "system_prompt_template": len(request.system_prompt_template or ""),
        "user_prompt_template": len(request.user_prompt_template or ""),
    }  # fmt: skip
    total = sum(sizes.values())
    if total > settings.max_input_chars:
        field = max(sizes, key=lambda name: sizes[name])
        raise InvalidRequest(
            f"{field}: the input holds {total} characters (messages, question, documents, "
            f"history and templates together); the limit is {settings.max_input_chars}",
            param=field,
        )


def check_json(field: str, value: object) -> None:
    """Free-form values sent on (to the model server, or back in the trailer and the
    GeneratedDoc) must encode: orjson refuses integers beyond 64 bits, which JSON input may
    hold; 422 here instead of a broken answer later. Nor may they hold NaN or infinities,
    which orjson would quietly send as null."""
    if value is None:
        return
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:
        raise InvalidRequest(f"{field}: {exc}; integers must fit in 64 bits", param=field) from None
    if b"null" in encoded:  # a None, or a NaN or infinity encoded as null: look closer
        require_finite(field, value)


def require_finite(field: str, value: object) -> None:
    """422 naming the place of the first NaN or infinite number in free-form ``value``.

    pydantic's JSON parser reads ``NaN``, ``Infinity``, ``-Infinity`` (and ``1e999``) as
    floats, which no JSON document may hold; typed fields refuse them (``allow_inf_nan``),
    free-form ones are walked here, once per request.
    """
    if _finite(value):
        return
    path = _non_finite_path(field, value)
    raise InvalidRequest(
        f"{path}: NaN and infinite numbers are not JSON; send a finite number", param=path
    )


def _finite(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _non_finite_path(field: str, value: object) -> str:
    """Where ``_finite`` failed, as ``field.key.0.key`` (only walked for a request refused)."""
    stack: list[tuple[str, object]] = [(field, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path
        if isinstance(item, dict):
            stack.extend((f"{path}.{key}", v) for key, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(item))
    return field
