"""Size caps on the openai SDK's reads (``LLM_MODEL_CLIENT=chatopenai``,
``LLM_MODEL_API=completions``): an httpx2 transport that holds a model server's reply to
the limits the service's own client reads with.

The SDK reads through httpx2 (openai >= 3), which reads an error body, a whole reply or a
stream's event for as long as the server sends. ``CappedTransport`` and
``AsyncCappedTransport`` wrap httpx2's own transport (same TLS context, proxy and pool
limits) and count what each reply's body yields as it is read:

- an error (status not 2xx): the first ``bounded.ERROR_BODY_BYTES``, read for at most
  ``bounded.ERROR_BODY_SECONDS``; the rest is dropped with the connection, and the SDK
  makes its status error of what came;
- a whole reply: ``faults.too_large`` (502) once it passes ``max_response_bytes`` (a
  declared ``Content-Length`` past it, before reading);
- a stream (``text/event-stream``): a 502 once one event passes ``max_line_bytes``. The
  SDK keeps an event (every line up to the blank line that ends it) in memory, so the
  event is what is counted: a line is never longer than its event.

The errors are the service's ``UpstreamError``: the SDK passes exceptions other than
httpx2's through untouched (it wraps only request and timeout errors), so the client
gets the same 502, or SSE error event, as from the service's own client.

Replies are not decompressed: requests ask for ``Accept-Encoding: identity`` and a
compressed reply is refused, as a small compressed body could expand past any cap.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Iterator

import httpx2

from llm_service.errors import UpstreamError
from llm_service.upstream.bounded import ERROR_BODY_BYTES, ERROR_BODY_SECONDS
from llm_service.upstream.faults import too_large

# What ends an event for the SDK's SSE reader (openai._streaming): a blank line after
# "\n", "\r" or "\r\n" line ends.
_EVENT_ENDS = (b"\n\n", b"\r\r", b"\r\n\r\n")
_TAIL = 3  # the longest event end less one: what of a piece may start an end the next completes

_ERROR, _WHOLE, _EVENTS = 0, 1, 2


def event_too_long(limit: int) -> UpstreamError:
    return UpstreamError(
        f"model server sent a stream event longer than {limit} bytes (LLM_MAX_UPSTREAM_LINE_BYTES)"
    )


def _after_last_event_end(tail: bytes, piece: bytes) -> int:
    """How many bytes of ``piece`` follow the last event end in ``tail + piece`` that
    ``piece`` completes; -1 when it completes none (``tail``: the previous piece's end)."""
    last = -1
    for end in _EVENT_ENDS:
        at = piece.rfind(end)
        if at >= 0:
            last = max(last, at + len(end))
    if last < 0 and tail:
        edge = tail + piece[:_TAIL]
        for end in _EVENT_ENDS:
            at = edge.rfind(end)
            if at >= 0 and at + len(end) > len(tail):
                last = max(last, at + len(end) - len(tail))
    return -1 if last < 0 else len(piece) - last


class _Meter:
    """One reply's count against its cap, shared by the sync and async streams.

    ``take`` returns the piece to pass on (an error body's last piece shortened), sets
    ``done`` when nothing more is to be read, and raises past a cap (setting ``failed``)."""

    __slots__ = ("deadline", "done", "failed", "kind", "limit", "run", "tail")

    def __init__(self, response: httpx2.Response, max_response: int, max_event: int) -> None:
        self.done = False
        self.failed = False  # a cap was passed: the connection is dropped unread
        self.run = 0  # bytes so far: of the body, or of the stream's current event
        self.tail = b""
        self.deadline = 0.0
        encoding = response.headers.get("content-encoding", "").strip().lower() or "identity"
        if encoding != "identity":
            # Its value is not shown: only scrubbed text of the server's reaches a client.
            raise UpstreamError(
                "model server sent a compressed reply (Content-Encoding) though asked for none"
            )
        if not response.is_success:
            self.kind, self.limit = _ERROR, ERROR_BODY_BYTES
            self.deadline = time.monotonic() + ERROR_BODY_SECONDS
        elif response.headers.get("content-type", "").startswith("text/event-stream"):
            self.kind, self.limit = _EVENTS, max_event
        else:
            self.kind, self.limit = _WHOLE, max_response
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_response:
                raise too_large(max_response)

    def take(self, piece: bytes) -> bytes:
        if self.kind == _EVENTS:
            if piece.endswith(b"\n\n"):  # the usual read: whole events, nothing after them
                self.run = 0
                self.tail = b"\n\n"
                return piece
            after = _after_last_event_end(self.tail, piece)
            self.run = self.run + len(piece) if after < 0 else after
            self.tail = (self.tail + piece)[-_TAIL:] if len(piece) < _TAIL else piece[-_TAIL:]
            if self.run > self.limit:
                self.failed = True
                raise event_too_long(self.limit)
            return piece
        self.run += len(piece)
        if self.kind == _WHOLE:
            if self.run > self.limit:
                self.failed = True
                raise too_large(self.limit)
            return piece
        # An error body: what came within the cap and the time, then no more.
        if self.run >= self.limit or time.monotonic() > self.deadline:
            self.done = True
            return piece[: len(piece) - (self.run - self.limit)] if self.run > self.limit else piece
        return piece


class _CappedStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    def __iter__(self) -> Iterator[bytes]:
        meter = self._meter
        try:
            for piece in self._inner:
                yield meter.take(piece)
                if meter.done:
                    # The rest unread: the pool closes the connection rather than reuse it.
                    break
        finally:
            if meter.done or meter.failed:
                self._inner.close()

    def close(self) -> None:
        self._inner.close()


class _AsyncCappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        meter = self._meter
        try:
            async for piece in self._inner:
                yield meter.take(piece)
                if meter.done:
                    break
        finally:
            if meter.done or meter.failed:
                await self._inner.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _capped(
    response: httpx2.Response, stream: httpx2.SyncByteStream | httpx2.AsyncByteStream
) -> httpx2.Response:
    return httpx2.Response(
        status_code=response.status_code,
        headers=response.headers,
        stream=stream,
        extensions=response.extensions,
    )


class CappedTransport(httpx2.BaseTransport):
    """httpx2's ``HTTPTransport`` (``verify``, ``proxy``, ``limits``; never the
    environment) whose replies are read within the caps (see the module)."""

    def __init__(
        self,
        *,
        max_response_bytes: int,
        max_line_bytes: int,
        verify: ssl.SSLContext,
        proxy: str | None,
        limits: httpx2.Limits,
    ) -> None:
        self._inner = httpx2.HTTPTransport(
            verify=verify, proxy=proxy, limits=limits, trust_env=False
        )
        self.max_response_bytes = max_response_bytes
        self.max_line_bytes = max_line_bytes

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = self._inner.handle_request(request)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        try:
            meter = _Meter(response, self.max_response_bytes, self.max_line_bytes)
        except UpstreamError:
            response.stream.close()
            raise
        return _capped(response, _CappedStream(response.stream, meter))

    def close(self) -> None:
        self._inner.close()


class AsyncCappedTransport(httpx2.AsyncBaseTransport):
    """``CappedTransport`` for ``httpx2.AsyncClient``."""

    def __init__(
        self,
        *,
        max_response_bytes: int,
        max_line_bytes: int,
        verify: ssl.SSLContext,
        proxy: str | None,
        limits: httpx2.Limits,
    ) -> None:
        self._inner = httpx2.AsyncHTTPTransport(
            verify=verify, proxy=proxy, limits=limits, trust_env=False
        )
        self.max_response_bytes = max_response_bytes
        self.max_line_bytes = max_line_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        try:
            meter = _Meter(response, self.max_response_bytes, self.max_line_bytes)
        except UpstreamError:
            await response.stream.aclose()
            raise
        return _capped(response, _AsyncCappedStream(response.stream, meter))

    async def aclose(self) -> None:
        await self._inner.aclose()
