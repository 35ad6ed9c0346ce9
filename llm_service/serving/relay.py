"""The answer's way up: model output in, wire frames out, one relay per streamed answer.

A relay has two halves, because a streamed answer has a point of no return:

- ``start`` waits for the first frame with content. Anything that fails before it raises a
  ``ServiceError``, so the route can still answer with a status code (502, 503, 504).
- ``run`` relays the rest to a ``FrameOut`` (the HTTP response). From here a failure becomes
  an SSE error event and a clean end (``[DONE]``), never a torn connection.

``UpstreamRelay`` relays the model server's chunks straight from the upstream client (the
default: fastest). While the client keeps up, ``FrameOut.sink`` offers a writer that takes
frames from the network callback (``http.push``): the relay hands it to the upstream stream,
which then parses, encodes and writes each read with no task woken per token. When the
writer asks to stop (the client is slow, or gone) the relay pulls again and sends through
``FrameOut.send``, which waits for the client. ``ChainRelay`` relays the chain's message
chunks (``ChatOpenAI``, callbacks, tracing) and always pulls. Both write the same bytes for
the same answer, with ``protocol.openai.OpenAIChunkEncoder``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_core.messages import BaseMessageChunk

from llm_service.chain.messages import openai_usage
from llm_service.errors import ServiceError, as_service_error, detached
from llm_service.protocol.openai import DONE, OpenAIChunkEncoder
from llm_service.upstream.sse import Chunk
from llm_service.upstream.stream import BatchSink

log = logging.getLogger(__name__)

Trailer = Callable[[str], Mapping[str, Any] | None]
"""Makes the ``json:`` trailer from the whole answer text (e.g. to report citations)."""

FrameSink = Callable[[bytes], bool]
"""Takes a frame in the network callback; True asks to stop pushing."""


@dataclass
class Answer:
    """What a finished generation produced, for GeneratedDoc, logs and the trailer."""

    text_parts: list[str] = field(default_factory=list)  # choice 0's content
    finish_reason: str | None = None  # choice 0's
    others: dict[int, str | None] = field(default_factory=dict)  # n > 1: index -> finish reason
    usage: dict[str, Any] | None = None
    error: ServiceError | None = None  # a failure after the first token (sent as an event)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class FrameOut(Protocol):
    """Where a relay writes the frames after the first (the HTTP response's body)."""

    async def send(self, frame: bytes) -> None:
        """Write ``frame`` once the client can take it."""
        ...

    def sink(self) -> FrameSink | None:
        """A writer for frames from the network callback, while the client keeps up."""
        ...


class BatchSource(Protocol):
    """The upstream chunks of one answer (``upstream.stream.UpstreamStream``)."""

    first: list[Chunk]

    async def next(self) -> list[Chunk]: ...

    async def push(self, sink: BatchSink) -> None: ...

    def close(self) -> None: ...


class Relay(Protocol):
    """One streamed answer: ``start`` (the first frame), ``run`` (the rest), ``aclose`` (let
    go of the source, however the answer ended; safe to repeat)."""

    async def start(self) -> bytes: ...

    async def run(self, out: FrameOut) -> None: ...

    async def aclose(self) -> None: ...


class FrameList:
    """A ``FrameOut`` that keeps the frames: for callers other than the HTTP route."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def sink(self) -> FrameSink | None:
        return None


async def collect(relay: Relay) -> bytes:
    """All of ``relay``'s bytes, pulled: a stream's body without an HTTP response."""
    try:
        out = FrameList()
        out.frames.append(await relay.start())
        await relay.run(out)
        return b"".join(out.frames)
    finally:
        await relay.aclose()


Redact = Callable[[str], str]
"""Scrubs text that came from the model server (``upstream.redact.Redactor``)."""


class _Frames:
    """What both relays share: the encoder, the answer so far, the end and the error end."""

    def __init__(
        self,
        encoder: OpenAIChunkEncoder,
        answer: Answer,
        trailer: Trailer,
        on_batch: Callable[[], object] | None,
        redact: Redact | None,
    ) -> None:
        self.encoder = encoder
        self.answer = answer
        self.trailer = trailer
        self.on_batch = on_batch
        self.redact = redact
        self.ended = False  # the end frame was made: nothing is left to relay

    def failure(self, exc: Exception) -> ServiceError:
        """``exc`` as the error the client gets, its outside text scrubbed."""
        return as_service_error(exc, self.redact)

    def end(self) -> bytes:
        self.ended = True
        answer, encoder = self.answer, self.encoder
        return (
            encoder.finish(answer.finish_reason, answer.usage, answer.others)
            + DONE
            + encoder.trailer(self.trailer(answer.text))
        )

    def error_end(self, exc: Exception) -> bytes:
        self.ended = True
        self.answer.error = err = detached(self.failure(exc))
        log.warning("stream failed after the first token: %s", err.message)
        return self.encoder.error(err) + DONE


class UpstreamRelay(_Frames):
    """The model server's chunk batches to SSE frames, one write per network read.

    A chunk that holds only content for choice 0 (nearly all of them) is encoded by
    ``OpenAIChunkEncoder.content``, the per-token hot path; any other (tool-call, reasoning
    or logprob deltas, other choices) is relayed whole in OpenAI's chunk shape. ``rich``
    (the request asked for ``n`` > 1 or logprobs) sends every chunk the long way, which
    checks each choice's index and logprobs; without it no chunk can carry them."""

    def __init__(
        self,
        open_source: Callable[[], Awaitable[BatchSource]],
        encoder: OpenAIChunkEncoder,
        answer: Answer,
        trailer: Trailer,
        on_batch: Callable[[], object] | None = None,
        redact: Redact | None = None,
        *,
        rich: bool = False,
    ) -> None:
        super().__init__(encoder, answer, trailer, on_batch, redact)
        self._open = open_source
        self._source: BatchSource | None = None
        self._rich = rich
        self._calls: set[tuple[int, int]] = set()  # (choice, tool call) begun

    def encode(self, batch: list[Chunk]) -> bytes:
        """The frames of one batch as one write (``b""`` when it holds nothing to relay)."""
        content, parts, answer = self.encoder.content, self.answer.text_parts, self.answer
        plain = not self._rich
        out: list[bytes] = []
        for chunk in batch:
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta") or {}
                text = delta.get("content")
                # Content alone (TGI repeats the role in every delta): the hot path.
                if text and plain and (len(delta) == 1 or (len(delta) == 2 and "role" in delta)):
                    parts.append(text)
                    out.append(content(text))
                    if choice.get("finish_reason"):
                        answer.finish_reason = choice["finish_reason"]
                else:
                    frame = self.other(choices)
                    if frame:
                        out.append(frame)
            if chunk.get("usage"):
                answer.usage = chunk["usage"]
        if not out:
            return b""
        if self.on_batch is not None:
            self.on_batch()
        return out[0] if len(out) == 1 else b"".join(out)

    def other(self, choices: list[Any]) -> bytes:
        """The frame of a chunk off the hot path (``b""`` for one that carries nothing: a
        role-only first chunk, a finish reason alone). Finish reasons are kept for the end
        frame, as on the hot path; the rest of each choice is relayed as it came, without
        its null keys."""
        answer = self.answer
        relayed: list[dict[str, Any]] = []
        for choice in choices:
            index = choice.get("index") or 0
            reason = choice.get("finish_reason")
            if index:
                if reason or index not in answer.others:
                    answer.others[index] = reason
            elif reason:
                answer.finish_reason = reason
            delta = {k: v for k, v in (choice.get("delta") or {}).items() if v is not None}
            logprobs = choice.get("logprobs")
            if not logprobs and all(k == "role" or v in ("", []) for k, v in delta.items()):
                continue  # nothing but the role, or empty
            text = delta.get("content")
            if not index and text:
                answer.text_parts.append(text)
                if not logprobs and len(choices) == 1 and delta.keys() <= {"content", "role"}:
                    return self.encoder.content(text)
            if "tool_calls" in delta:
                delta = self._tool_delta(index, delta)
            relayed.append({**choice, "delta": delta, "finish_reason": None})
        return self.encoder.choices(relayed) if relayed else b""

    def _tool_delta(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        """A tool-call delta as OpenAI streams one: a call's id, type and name in its first
        delta only, its arguments in pieces after. llama.cpp's server repeats the name (and
        the legacy ``function_call`` beside ``tool_calls``) in every delta, which clients
        that add up the pieces would join into one long name."""
        calls = []
        for call in delta["tool_calls"]:
            key = (index, call.get("index") or 0)
            if key in self._calls:
                call = {k: v for k, v in call.items() if k not in ("id", "type")}
                function = call.get("function")
                if isinstance(function, dict) and "name" in function:
                    call["function"] = {k: v for k, v in function.items() if k != "name"}
            else:
                self._calls.add(key)
            calls.append(call)
        return {k: v for k, v in delta.items() if k != "function_call"} | {"tool_calls": calls}

    async def start(self) -> bytes:
        """The first frame with content (or the end frame of an answer without any)."""
        try:
            self._source = source = await self._open()
            frame = self.encode(source.first)
            while not frame:  # vLLM's first chunk carries only the role
                batch = await source.next()
                if not batch:
                    return self.encoder.role() + self.end()
                frame = self.encode(batch)
        except Exception as exc:
            raise self.failure(exc) from None
        return self.encoder.role() + frame

    async def run(self, out: FrameOut) -> None:
        """The frames after the first, to ``out``, until the end frame or an error event."""
        source = self._source
        assert source is not None, "start() first"
        try:
            while not self.ended:
                try:
                    sink = out.sink()
                    if sink is not None:  # the client keeps up: write from the network callback
                        await source.push(self._pusher(sink))
                    batch = await source.next()
                    frame = self.encode(batch) if batch else self.end()
                except Exception as exc:
                    frame = self.error_end(exc)
                if frame:
                    await out.send(frame)
        finally:
            self.close()

    def _pusher(self, sink: FrameSink) -> BatchSink:
        encode = self.encode

        def push(batch: list[Chunk]) -> bool:
            frame = encode(batch)
            return sink(frame) if frame else False

        return push

    def close(self) -> None:
        """Let go of the upstream response (closed unless read to its end)."""
        if self._source is not None:
            self._source.close()

    async def aclose(self) -> None:
        self.close()


class ChainRelay(_Frames):
    """The chain's message chunks to the same frames as ``UpstreamRelay``; always pulled."""

    def __init__(
        self,
        chunks: AsyncIterator[BaseMessageChunk],
        encoder: OpenAIChunkEncoder,
        answer: Answer,
        trailer: Trailer,
        on_batch: Callable[[], object] | None = None,
        redact: Redact | None = None,
    ) -> None:
        super().__init__(encoder, answer, trailer, on_batch, redact)
        self._chunks = chunks

    async def _next(self) -> bytes:
        """The next frame with content, or the end frame."""
        answer = self.answer
        async for chunk in self._chunks:
            if chunk.response_metadata.get("finish_reason"):
                answer.finish_reason = chunk.response_metadata["finish_reason"]
            usage = openai_usage(getattr(chunk, "usage_metadata", None))
            if usage:
                answer.usage = usage
            text = chunk.text
            if text:
                answer.text_parts.append(text)
                if self.on_batch is not None:
                    self.on_batch()
                return self.encoder.content(text)
        return self.end()

    async def start(self) -> bytes:
        try:
            return self.encoder.role() + await self._next()
        except Exception as exc:
            raise self.failure(exc) from None

    async def run(self, out: FrameOut) -> None:
        try:
            while not self.ended:
                try:
                    frame = await self._next()
                except Exception as exc:
                    frame = self.error_end(exc)
                await out.send(frame)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def chunks_of_events(events: AsyncIterator[Any]) -> AsyncIterator[BaseMessageChunk]:
    """The chat model's message chunks out of the chain's runnable events (v2), so that the
    route can relay ``astream_events`` (what callbacks and tracers see) with ``ChainRelay``."""
    try:
        async for event in events:
            if event["event"] == "on_chat_model_stream":
                yield event["data"]["chunk"]
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
