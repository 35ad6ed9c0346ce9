"""Response bytes written from the model server connection's callback (push mode).

A token relayed through the request's task costs a wake-up: a future set, the task resumed
through every ``await`` between it and the socket, an ASGI ``send``. Under uvicorn's
httptools server (what ``llm-service serve`` runs) the relay can instead hand a writer on the
response's transport to the upstream stream, which writes each token's frame as it parses it
(``serving.relay.UpstreamRelay``): the task sleeps until the answer ends. This module is the
only one that knows uvicorn's internals.

``DirectWriter`` writes the body exactly as uvicorn's ``send`` does for a chunked response
(``<size in hex>\\r\\n<bytes>\\r\\n``) and says when to stop: the client's socket buffer is full
(uvicorn paused writing) or the client went away. The route then pulls frames through
``send`` again, which waits for the client like any ASGI response. Under any other server
``direct_writer`` returns None and every frame goes through ``send``.

The frames of one pass of the event loop go out together (``WriteBatch``: one ``call_soon``
per pass, not per token, which runs once the loop has handled that pass's network events and
before it waits for more). A pass handles the reads of many streams; writing their frames
back to back instead of one per callback lets a client that is waking up for the first frame
take the next ones without being woken again (docs/performance.md has the measurement). A
frame waits for the rest of its pass; the metrics' token times are taken when it is encoded,
just before. ``ResponseOut`` flushes its writer before anything it sends itself, so the
bytes stay in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Protocol

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

log = logging.getLogger(__name__)


class Flushable(Protocol):
    def flush(self) -> None: ...


class WriteBatch:
    """Writers with frames waiting in this pass of the event loop, flushed together by one
    ``call_soon`` callback. One per app, so one event loop."""

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


_MAX_WAITING = 64 * 1024  # bytes kept for one flush before the writer asks to stop


class DirectWriter:
    """Chunked body writes to one uvicorn response's transport (a ``relay.FrameSink``)."""

    __slots__ = (
        "_batch", "_broken", "_context", "_cycle", "_flow", "_pending", "_size", "_write",
    )  # fmt: skip

    def __init__(self, cycle: RequestResponseCycle, batch: WriteBatch) -> None:
        self._cycle = cycle
        self._flow = cycle.flow
        self._write = cycle.transport.write
        self._batch = batch
        self._pending: list[bytes] = []
        self._size = 0  # bytes in _pending
        self._broken = False  # a write failed: push no more, let send report it
        # The request's context (its id): flush runs in a callback that may carry another
        # request's, as it writes the frames of every stream of one pass of the loop.
        self._context = contextvars.copy_context()

    @property
    def ready(self) -> bool:
        """The client is there and its socket buffer has room."""
        return not (self._cycle.disconnected or self._flow.write_paused or self._broken)

    def __call__(self, body: bytes) -> bool:
        """Write ``body`` as one HTTP chunk with the rest of this loop turn's writes;
        True: stop, go back to ``send`` (client gone or slow, or a write failed)."""
        if self._cycle.disconnected or self._broken:
            return True
        if body:  # an empty chunk would end the response
            pending = self._pending
            if not pending:
                self._batch.add(self)
            frame = b"%x\r\n%b\r\n" % (len(body), body)
            pending.append(frame)
            self._size += len(frame)
        return self._flow.write_paused or self._size > _MAX_WAITING

    def flush(self) -> None:
        """Write what is waiting now (the batch's callback, or the route before it sends).
        Never raises: a failed write marks the writer broken."""
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._size = 0
            if not self._cycle.disconnected:
                try:
                    self._write(data)
                except Exception:
                    self._context.run(log.warning, "writing to the client failed", exc_info=True)
                    self._broken = True


def direct_writer(send: Send, batch: WriteBatch) -> DirectWriter | None:
    """A ``DirectWriter`` for the response ``send`` belongs to, if that is uvicorn's
    httptools server with a chunked response under way (its head sent); else None."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return None
    try:
        if cycle.response_complete or cycle.chunked_encoding is not True:
            return None
        return DirectWriter(cycle, batch)
    except AttributeError:  # another uvicorn inside: no push (the push tests notice)
        return None


class ResponseOut:
    """The body of one SSE response as a relay's ``FrameOut``: frames through ASGI ``send``,
    or from the network callback through a ``DirectWriter`` while the client keeps up."""

    __slots__ = ("_direct", "_send")

    def __init__(self, send: Send, direct: DirectWriter | None) -> None:
        self._send = send
        self._direct = direct

    def sink(self) -> DirectWriter | None:
        direct = self._direct
        return direct if direct is not None and direct.ready else None

    async def send(self, frame: bytes, *, last: bool = False) -> None:
        """Write ``frame`` (``last``: and end the response)."""
        if self._direct is not None:
            self._direct.flush()  # pushed frames still waiting go first
        await self._send({"type": "http.response.body", "body": frame, "more_body": not last})
