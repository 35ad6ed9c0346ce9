"""One streamed answer from a model server, after its first chunk arrived.

``UpstreamClient.open_stream`` returns an ``UpstreamStream`` once the first batch of chunks
is in (connecting, failover to another replica and the first-token deadline are behind it).
From then on nothing is retried: the stream hands out batches until the answer ends, by
``next`` (the caller's task waits for each network read) or by ``push`` (each read is parsed
and handed to a callback from the network callback itself, so no task wakes per token).
``close`` gives the connection back: kept for the next request when the answer was read to
its end, closed otherwise, which is how the model server learns that nobody listens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from llm_service.errors import UpstreamTimeout
from llm_service.upstream import faults
from llm_service.upstream.failover import Replica
from llm_service.upstream.faults import ReplicaFailed
from llm_service.upstream.sse import Chunk, ChunkParser
from llm_service.upstream.wire import BadResponse, ReadTimeout, Sink, WireError

BatchSink = Callable[[list[Chunk]], bool]
"""Takes each batch in the network callback; True asks to stop pushing."""


class StreamResponse(Protocol):
    """A streamed response whose head has arrived, as either transport gives it
    (``wire.StreamConnection``, ``aiohttp_stream.AiohttpStreamResponse``). Failures are
    raised as ``wire.WireError`` and its subclasses, whichever the transport."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # names looked up in lower case

    async def read(self) -> bytes:
        """Body bytes that arrived since the last call; ``b""`` at the end."""
        ...

    async def pump(self, sink: Sink) -> None:
        """Body bytes to ``sink`` until the end, a failure, or ``sink`` returns True."""
        ...

    async def read_upto(self, limit: int) -> bytes: ...

    def idle_timeout(self, seconds: float | None) -> None: ...


ResponseT = TypeVar("ResponseT", bound=StreamResponse)


class StreamTransport(Protocol[ResponseT]):
    """Where streamed requests go: ``wire.StreamPool`` (``LLM_UPSTREAM_TRANSPORT=lean``) or
    ``aiohttp_stream.AiohttpStreamPool`` (``aiohttp``)."""

    async def open(
        self, url: str, body: bytes, headers: Mapping[str, str], *, total: float | None
    ) -> ResponseT:
        """POST ``body`` and return once the response's head has arrived."""
        ...

    def release(self, conn: ResponseT) -> None:
        """Keep the connection if its response was read to the end, else close it."""
        ...

    async def aclose(self) -> None: ...


class UpstreamStream:
    """The batches of one streamed chat completion (see the module docstring)."""

    __slots__ = ("_closed", "_conn", "_parser", "_pool", "_replica", "_timeouts", "first")

    def __init__(
        self,
        conn: StreamResponse,
        pool: StreamTransport[Any],
        replica: Replica,
        timeouts: tuple[float | None, float],
        parser: ChunkParser | None = None,
    ) -> None:
        self.first: list[Chunk] = []
        """The first batch (empty only for an answer that ended without any chunk)."""
        self._conn = conn
        self._pool = pool
        self._replica = replica
        self._parser = parser or ChunkParser()  # the line limit and the redactor ride on it
        self._timeouts = timeouts  # (idle, total), for the messages of read timeouts
        self._closed = False

    def idle_timeout(self, seconds: float | None) -> None:
        """From now on, fail after ``seconds`` without data (once the first chunk is in)."""
        self._conn.idle_timeout(seconds)

    async def next(self) -> list[Chunk]:
        """The next batch of chunks; ``[]`` once the answer has ended. Raises an
        ``UpstreamError`` when the stream fails; what came before the failure was returned."""
        parser, conn = self._parser, self._conn
        while not parser.ended:
            try:
                data = await conn.read()
            except ReadTimeout as exc:
                raise self._timeout(exc) from None
            except BadResponse as exc:
                raise faults.bad_http(exc, parser.redact) from None
            except WireError as exc:
                raise faults.broke(exc, parser.redact, "stream") from None
            if not data:
                break
            batch = parser.feed(data)
            if batch:
                return batch
        return await self._end()

    async def push(self, sink: BatchSink) -> None:
        """Hand the batches to ``sink`` from the network callback until the answer ends or
        fails, or ``sink`` returns True; then return. ``next`` reports the end or the failure
        and returns what arrives after a stop."""
        parser = self._parser
        if parser.ended:
            return

        def deliver(data: bytes) -> bool:
            batch = parser.feed(data)
            if batch and sink(batch):
                return True
            return parser.ended

        await self._conn.pump(deliver)

    def close(self) -> None:
        """Give the connection back (kept if the answer was read to its end) and the
        replica's load slot. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._replica.in_flight -= 1
            self._pool.release(self._conn)

    async def _end(self) -> list[Chunk]:
        parser = self._parser
        if parser.failure is not None:
            raise parser.failure
        if parser.finished:
            # Read the body's end too, so the connection goes back to the pool for the
            # next request instead of being closed.
            with contextlib.suppress(WireError):
                while await self._conn.read():
                    pass
            return []
        if parser.has_finish_reason:
            return []  # no [DONE] but a finish reason: complete
        raise ReplicaFailed("model server closed the stream before the answer ended")

    def _timeout(self, exc: ReadTimeout) -> UpstreamTimeout:
        idle, total = self._timeouts
        if exc.idle:
            return UpstreamTimeout(f"model server sent nothing for LLM_IDLE_TIMEOUT={idle:g} s")
        return UpstreamTimeout(f"model server stream exceeded LLM_REQUEST_TIMEOUT={total:g} s")
