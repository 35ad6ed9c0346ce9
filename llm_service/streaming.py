"""Encoders: model output to wire bytes, one way per wire format.

``OpenAIChunkEncoder`` writes OpenAI ``chat.completion.chunk`` SSE as the seed does: one
frame per content piece, a last content-less frame with the finish reason, ``data: [DONE]``,
then the ``json: {...}`` trailer when there is one. Constant parts are encoded once per
request; per chunk only the content string is encoded.

``relay_upstream`` and ``relay_chain`` feed it from the two sources (upstream chunk dicts,
or the chain's ``AIMessageChunk``s) and produce identical bytes for the same answer;
``chunks_of_events`` lets ``relay_chain`` take the chain's runnable events (v2) instead.

``LangServeEncoder`` writes LangServe's SSE (``metadata``, ``data``, ``error``, ``end``) for
the routes under ``LLM_LANGSERVE_PATH``, and ``relay_langserve`` feeds it from the chain's
``astream`` / ``astream_events``. It shares nothing per chunk with the OpenAI encoder.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from langchain_core.messages import BaseMessageChunk

from llm_service.errors import ServiceError, as_service_error
from llm_service.upstream.client import BatchSink, Chunk
from llm_service.upstream.params import finish_reason

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"

Trailer = Callable[[str], Mapping[str, Any] | None]
"""Makes the ``json:`` trailer from the whole answer text (e.g. to report citations)."""


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass
class Answer:
    """What a finished generation produced, for GeneratedDoc, logs and the trailer."""

    text_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: ServiceError | None = None  # a failure after the first token (sent as an event)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class OpenAIChunkEncoder:
    """Bytes of the OpenAI chunk stream for one completion."""

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        head = orjson.dumps(
            {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
             "model": model}
        )[:-1]  # fmt: skip
        self._head = b"data: " + head + b',"choices":'
        self._content_head = self._head + b'[{"index":0,"delta":{"content":'
        self._content_tail = b'},"finish_reason":null}]}\n\n'
        self.include_usage = include_usage

    def content(self, text: str) -> bytes:
        return self._content_head + orjson.dumps(text) + self._content_tail

    def finish(self, reason: str | None, usage: Mapping[str, Any] | None) -> bytes:
        frame = (
            self._content_head
            + b'""},"finish_reason":'
            + orjson.dumps(finish_reason(reason))
            + b"}]}\n\n"
        )
        if self.include_usage and usage is not None:
            frame += self._head + b"[]," + orjson.dumps({"usage": usage})[1:] + b"\n\n"
        return frame

    @staticmethod
    def trailer(data: Mapping[str, Any] | None) -> bytes:
        return b"" if data is None else b"json: " + orjson.dumps(data) + b"\n\n"

    @staticmethod
    def error(exc: ServiceError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(exc.body()) + b"\n\n"


class Flushable(Protocol):
    def flush(self) -> None: ...


class WriteBatch:
    """Writers with frames waiting in this pass of the event loop, flushed together by one
    ``call_soon`` callback (see ``api.direct``). One per service, so one event loop."""

    __slots__ = ("_writers",)

    def __init__(self) -> None:
        self._writers: list[Flushable] = []

    def add(self, writer: Flushable) -> None:
        """``writer`` has its first frame waiting in this pass: flush it with the others."""
        if not self._writers:
            asyncio.get_running_loop().call_soon(self._flush)
        self._writers.append(writer)

    def _flush(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            try:
                writer.flush()
            except Exception:  # one writer's failure must not strand the others' frames
                log.exception("flushing a stream's frames failed")


FrameSink = Callable[[bytes], bool]
"""Push mode of ``relay_upstream``: takes SSE bytes in the network callback; True: stop."""


async def relay_upstream(
    batches: AsyncGenerator[list[Chunk], BatchSink | None],
    encoder: OpenAIChunkEncoder,
    answer: Answer,
    trailer: Trailer,
    on_batch: Callable[[], object] | None = None,
) -> AsyncGenerator[bytes, FrameSink | None]:
    """Upstream chunk batches to SSE bytes, one write per batch: the hot path.

    An error before the first frame is raised (the route answers it with a status code);
    after it, it becomes an SSE error event and a clean end. ``on_batch`` is called once per
    relayed batch (metrics: time to first token, inter-token gaps).

    Push mode: ``asend`` a ``FrameSink`` instead of calling ``anext`` and the frames that
    follow are handed to it from the model server connection's callback (see
    ``UpstreamClient.stream_chat``) until the answer ends or the sink returns True; ``asend``
    then returns the next frame as ``anext`` would (the end frame, or an error event).
    """
    content = encoder.content
    parts = answer.text_parts

    def encode(batch: list[Chunk]) -> bytes:
        out: list[bytes] = []
        for chunk in batch:
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    out.append(content(text))
                if choice.get("finish_reason"):
                    answer.finish_reason = choice["finish_reason"]
            if chunk.get("usage"):
                answer.usage = chunk["usage"]
        if not out:
            return b""
        if on_batch is not None:
            on_batch()
        return out[0] if len(out) == 1 else b"".join(out)

    def pusher(sink: FrameSink) -> BatchSink:
        def push(batch: list[Chunk]) -> bool:
            frame = encode(batch)
            return sink(frame) if frame else False

        return push

    started = False
    push: BatchSink | None = None
    try:
        while True:
            try:
                batch = await batches.asend(push)
            except StopAsyncIteration:
                break
            push = None
            frame = encode(batch)
            if frame:
                started = True
                sink = yield frame
                if sink is not None:
                    push = pusher(sink)
        yield _end(encoder, answer, trailer)
    except Exception as exc:
        if not started:
            raise as_service_error(exc) from None
        yield _error_end(encoder, exc, answer)
    finally:
        await batches.aclose()


async def relay_chain(
    chunks: AsyncIterator[BaseMessageChunk],
    encoder: OpenAIChunkEncoder,
    answer: Answer,
    trailer: Trailer,
    on_batch: Callable[[], object] | None = None,
) -> AsyncGenerator[bytes, FrameSink | None]:
    """The chain's message chunks to the same SSE bytes as ``relay_upstream``. It has no
    push mode: a ``FrameSink`` sent to it is ignored, every frame is pulled."""
    started = False
    try:
        async for chunk in chunks:
            text = chunk.text
            if chunk.response_metadata.get("finish_reason"):
                answer.finish_reason = chunk.response_metadata["finish_reason"]
            usage = getattr(chunk, "usage_metadata", None)
            if usage:
                answer.usage = {
                    "prompt_tokens": usage["input_tokens"],
                    "completion_tokens": usage["output_tokens"],
                    "total_tokens": usage["total_tokens"],
                }
            if text:
                started = True
                answer.text_parts.append(text)
                if on_batch is not None:
                    on_batch()
                yield encoder.content(text)
        yield _end(encoder, answer, trailer)
    except Exception as exc:
        if not started:
            raise as_service_error(exc) from None
        yield _error_end(encoder, exc, answer)
    finally:
        await _aclose(chunks)


def _end(encoder: OpenAIChunkEncoder, answer: Answer, trailer: Trailer) -> bytes:
    return (
        encoder.finish(answer.finish_reason, answer.usage)
        + DONE
        + encoder.trailer(trailer(answer.text))
    )


def _error_end(encoder: OpenAIChunkEncoder, exc: Exception, answer: Answer) -> bytes:
    answer.error = err = as_service_error(exc)
    log.warning("stream failed after the first token: %s", err.message)
    return encoder.error(err) + DONE


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def chunks_of_events(events: AsyncIterator[Any]) -> AsyncGenerator[BaseMessageChunk, None]:
    """The chat model's message chunks out of the chain's runnable events (v2).

    With it the OpenAI route can stream ``astream_events`` (what callbacks and tracers see)
    through ``relay_chain``: same encoder, same bytes.
    """
    try:
        async for event in events:
            if event["event"] == "on_chat_model_stream":
                yield event["data"]["chunk"]
    finally:
        await _aclose(events)


# --- LangServe ---------------------------------------------------------------------------


def _lc_default(obj: Any) -> Any:
    """LangChain objects (messages, prompt values, documents) as LangServe sends them: their
    pydantic dump, which ``RemoteRunnable``'s serializer turns back into objects."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump()
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__}
    return str(obj)


def lc_dumps(obj: Any) -> bytes:
    """JSON bytes of ``obj`` in LangServe's well-known-object form."""
    return orjson.dumps(obj, default=_lc_default)


class LangServeEncoder:
    """Bytes of LangServe's SSE: ``event: metadata`` (run_id), ``event: data`` per chunk or
    runnable event, ``event: error`` ({status_code, message}) and ``event: end``."""

    END = b"event: end\n\n"

    @staticmethod
    def metadata(run_id: str) -> bytes:
        return b"event: metadata\ndata: " + orjson.dumps({"run_id": run_id}) + b"\n\n"

    @staticmethod
    def data(obj: Any) -> bytes:
        return b"event: data\ndata: " + lc_dumps(obj) + b"\n\n"

    @staticmethod
    def error(exc: ServiceError) -> bytes:
        body = {"status_code": exc.status, "message": exc.message}
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


async def relay_langserve(
    items: AsyncIterator[Any], *, run_id: str | None = None
) -> AsyncGenerator[bytes, None]:
    """The chain's output chunks (``astream``) or events (``astream_events``) as LangServe
    SSE: ``metadata`` first when ``run_id`` is given, one ``data`` event each, then ``end``.
    Any failure becomes an ``error`` event with its status code, and the stream ends."""
    encoder = LangServeEncoder
    try:
        if run_id is not None:
            yield encoder.metadata(run_id)
        async for item in items:
            yield encoder.data(item)
        yield encoder.END
    except Exception as exc:
        err = as_service_error(exc)
        log.warning("LangServe stream failed: %s", err.message)
        yield encoder.error(err)
    finally:
        await _aclose(items)
