"""Streamed answers over aiohttp: the alternative to the lean transport (``wire.py``).

``LLM_UPSTREAM_TRANSPORT=aiohttp`` sends streams through aiohttp's client, the library that
already carries whole answers, ``/v1/models`` and ``/tokenize``: for a model server or a
proxy in front of it that the lean HTTP/1.1 parser does not get along with, or to rule the
lean transport out when chasing a fault. It costs more per token (a task wakes for every
network read, aiohttp's reader and timers run per read), and does the same thing.

"The same thing" is the contract of ``stream.StreamTransport`` and ``StreamResponse``,
which ``StreamPool``/``StreamConnection`` satisfy too: ``open`` returns once the response's
head has arrived, ``read`` returns the body bytes that arrived since the last call (``b""``
at the end), ``pump`` hands them to a sink, ``release`` keeps a connection read to its end
and closes any other. Failures are raised as the lean transport's exceptions (``wire``'s
``WireError`` family), so ``client.py`` and ``stream.py`` map both transports' faults with
one ``except`` list to the same messages and status codes. The timeouts are the lean
transport's: one timer for the whole request and, once the first chunk is in, one for the
silence between chunks, armed per request, not per read.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp

from llm_service.upstream.faults import os_reason
from llm_service.upstream.proxy import Proxies
from llm_service.upstream.wire import (
    BadResponse,
    CertificateError,
    ConnectFailed,
    ConnectTimeout,
    ProxyError,
    ReadTimeout,
    Sink,
    WireError,
)

# aiohttp >= 3.10.10 tells DNS failures apart; before, they come as the resolver's gaierror.
_DNS_ERROR: type[Exception] = getattr(aiohttp, "ClientConnectorDNSError", socket.gaierror)


class AiohttpStreamResponse:
    """One streamed response over aiohttp; ``release`` it through its pool."""

    __slots__ = (
        "_content",
        "_idle",
        "_idle_timer",
        "_last_data",
        "_loop",
        "_reading",
        "_total_timer",
        "complete",
        "error",
        "headers",
        "response",
        "status",
    )

    def __init__(self, response: aiohttp.ClientResponse, loop: asyncio.AbstractEventLoop) -> None:
        self.response = response
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers  # looked up case-insensitively
        self.complete = False  # the whole body has been read
        self.error: WireError | None = None
        self._content = response.content
        self._loop = loop
        self._reading = False  # a read is waiting for the network
        self._idle: float | None = None
        self._last_data = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._total_timer: asyncio.TimerHandle | None = None

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call; ``b""`` once the body has ended."""
        if self.error is not None:
            raise self.error
        self._reading = True
        try:
            data = await self._content.readany()
        except WireError as exc:  # set by a timer of ours
            self.error = exc
            raise
        except aiohttp.ClientPayloadError as exc:
            # A body cut short (closed before its length or last chunk) or badly framed:
            # the lean transport calls both a broken stream.
            self.error = WireError(
                f"the model server closed the connection before the body ended ({exc})"
            )
            raise self.error from None
        except (aiohttp.ClientError, OSError) as exc:
            self.error = WireError(f"connection lost: {exc}")
            raise self.error from None
        finally:
            self._reading = False
        if self._idle is not None:
            self._last_data = self._loop.time()
        if not data:
            self.complete = True
        return data

    async def pump(self, sink: Sink) -> None:
        """Hand the body to ``sink`` until it ends, fails, or ``sink`` returns True; then
        return (``read`` reports the end or the failure). aiohttp has no callback for body
        bytes, so this is a read loop in the caller's task: the same bytes in the same
        order, a task wake-up per network read."""
        while not self.complete:
            try:
                data = await self.read()
            except WireError:
                return  # kept in self.error: the next read raises it
            if data and sink(data):
                return

    async def read_upto(self, limit: int) -> bytes:
        """The body's first ``limit`` bytes (all of it if shorter); the rest is left unread,
        so the connection is closed on release."""
        parts = []
        size = 0
        while size < limit and (chunk := await self.read()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    def idle_timeout(self, seconds: float | None) -> None:
        """From now on, fail a read after ``seconds`` without any data. Time the consumer
        spends away from ``read`` does not count: the silence is then ours."""
        if seconds:
            self._idle = seconds
            self._last_data = self._loop.time()
            self._idle_timer = self._loop.call_later(seconds, self._check_idle)

    def total_timeout(self, seconds: float) -> None:
        """``seconds`` from now the response is cut off, unless it has been read."""
        self._total_timer = self._loop.call_later(seconds, self._total_expired, seconds)

    def finish(self) -> None:
        """Stop the timers; the response is given back or closed by the pool."""
        self._idle = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._total_timer is not None:
            self._total_timer.cancel()
            self._total_timer = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.error is None

    def _fail(self, error: WireError) -> None:
        """Wake a waiting read with ``error`` (a later one raises it) and close the
        connection: the model server sees the disconnect and stops generating."""
        if self.error is None:
            self.error = error
        self._content.set_exception(error)
        self.response.close()

    def _total_expired(self, seconds: float) -> None:
        self._total_timer = None
        if not self.complete:
            self._fail(ReadTimeout(f"no whole answer within {seconds:g} s", idle=False))

    def _check_idle(self) -> None:
        self._idle_timer = None
        idle = self._idle
        if idle is None or self.complete or self.error is not None:
            return
        now = self._loop.time()
        if not self._reading:  # the consumer is busy elsewhere: nobody is waiting on them
            self._last_data = now
        silent = now - self._last_data
        if silent >= idle:
            self._fail(ReadTimeout(f"nothing for {idle:g} s", idle=True))
        else:
            self._idle_timer = self._loop.call_later(idle - silent, self._check_idle)


class AiohttpStreamPool:
    """Streamed requests over an aiohttp session of their own, for one event loop.

    The client builds ``session`` as it builds the one for whole answers (the connection
    limit ``LLM_UPSTREAM_CONNECTIONS``, the TLS context, the limits on a response head), with
    ``trace_configs()``, which tells a kept-alive connection from a new one."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        connect_timeout: float | None,
        proxies: Proxies | None = None,
    ) -> None:
        self.session = session
        self.proxies = proxies or Proxies()
        # The total and idle limits are this module's timers; aiohttp only connects.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)

    @staticmethod
    def trace_configs() -> list[aiohttp.TraceConfig]:
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_mark_reused)
        return [trace]

    @property
    def closed(self) -> bool:
        return self.session.closed

    async def open(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        total: float | None,
    ) -> AiohttpStreamResponse:
        """POST ``body`` to ``url``; returns once the response's head has arrived.

        A kept-alive connection that turns out to be closed by the server before it answers
        is replaced by a new one once (the request never reached the model)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(total):
                response = await self._send(url, body, headers)
        except TimeoutError:
            raise ReadTimeout(f"no answer within {total:g} s", idle=False) from None
        stream = AiohttpStreamResponse(response, loop)
        if total is not None:
            stream.total_timeout(max(0.0, total - (loop.time() - started)))
        return stream

    async def _send(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        retried = False
        while True:
            attempt = SimpleNamespace(reused=False)
            try:
                return await self.session.post(
                    url,
                    data=body,
                    timeout=self._timeout,
                    allow_redirects=False,  # a redirect would carry the prompt and the key away
                    trace_request_ctx=attempt,
                    **self.proxies.aiohttp_kwargs(url, headers),
                )
            except aiohttp.ClientProxyConnectionError as exc:
                raise ProxyError(os_reason(exc.os_error), unreachable=True) from None
            except aiohttp.ClientHttpProxyError as exc:
                raise ProxyError(f"answered {exc.status}", exc.status) from None
            except aiohttp.ConnectionTimeoutError:
                host = url.split("/")[2] if "//" in url else url
                raise ConnectTimeout(f"connecting to {host} timed out") from None
            except aiohttp.ClientConnectorCertificateError as exc:
                raise CertificateError(exc.certificate_error) from None  # type: ignore[arg-type]
            except _DNS_ERROR as exc:
                # As the lean transport has it: the resolver's error (its reason, "DNS").
                error: OSError = getattr(exc, "os_error", None) or socket.gaierror()
                raise ConnectFailed(socket.gaierror(error.errno, error.strerror)) from None
            except aiohttp.ClientConnectorError as exc:
                raise ConnectFailed(exc.os_error) from None
            except aiohttp.ClientResponseError as exc:  # not HTTP, or a head past the limits
                raise BadResponse(f"the model server sent bad HTTP: {exc.message}") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt.reused and not retried:
                    retried = True  # a stale kept-alive connection: once more, afresh
                    continue
                if isinstance(exc, aiohttp.ServerDisconnectedError):
                    raise WireError(
                        "the model server closed the connection before answering"
                    ) from None
                raise WireError(f"connection lost: {exc}") from None
            except aiohttp.ClientError as exc:
                raise WireError(str(exc)) from None

    def release(self, conn: AiohttpStreamResponse) -> None:
        """Give back a response that ``open`` returned (exactly once): its connection is
        kept for the next request if the body was read to its end, closed otherwise."""
        conn.finish()
        if conn.reusable and not self.closed:
            conn.response.release()
        else:
            conn.response.close()

    async def aclose(self) -> None:
        """Close every connection."""
        await self.session.close()


async def _mark_reused(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    context.trace_request_ctx.reused = True
