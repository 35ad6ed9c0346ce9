"""A lean HTTP/1.1 transport for streamed answers: the per-token hot path.

A streamed answer is one POST followed by many small reads, one per token when the model
server paces them. aiohttp's client pays for a StreamReader, timer contexts, chunk
bookkeeping and a wake-up on every read (docs/performance.md has the profile). This module
does only what a streamed answer needs, at a fraction of that: an
``asyncio.Protocol`` per kept-alive connection, the response parsed by ``httptools`` (the C
parser uvicorn uses), one future set per network read, and timers armed per request, not
per read. Whole answers, ``/v1/models`` and token requests keep using aiohttp.

``StreamPool.open`` sends a request and returns a ``StreamConnection`` whose head (status,
headers) has arrived; ``read`` then returns the body bytes that arrived since the last call
(``b""`` at the end). ``pump`` is the push alternative to ``read``: body bytes go to a
callback straight from the network callback, so a relayed token wakes no task at all.
``StreamPool.release`` puts a connection back for the next request if its response was
read to the end, and closes it otherwise: closing is how the model server learns that
nobody is listening. A connection left idle longer than the pool's ``keepalive`` is closed,
not reused.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from llm_service.upstream.faults import os_reason
from llm_service.upstream.proxy import Proxies, Proxy

Origin = tuple[str, str, int]  # scheme, host, port
_HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the socket pauses
_MAX_IDLE_PER_HOST = 1024
MAX_HEAD_BYTES = 64 * 1024
"""Largest response head (status line and headers, informational ones included) a server may
send: model servers send a few hundred bytes, and httptools keeps a header that has not
ended in memory."""


class WireError(Exception):
    """The connection failed: refused, reset, closed early, or sent what is not HTTP."""


class BadResponse(WireError):
    """The server sent what is not HTTP, or a head longer than ``MAX_HEAD_BYTES``."""


class ConnectFailed(WireError):
    """No connection could be made (refused, DNS, unreachable); ``os_error`` says why."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class CertificateError(WireError):
    """The server's TLS certificate is not trusted."""

    def __init__(self, error: ssl.SSLCertVerificationError) -> None:
        super().__init__(error.verify_message or str(error))


class ProxyError(WireError):
    """The proxy failed: ``unreachable`` (``reason`` says why), answered a CONNECT with
    ``status`` instead of opening the tunnel, or broke the protocol (``reason``)."""

    def __init__(
        self, reason: str, status: int | None = None, *, unreachable: bool = False
    ) -> None:
        super().__init__(f"proxy: {reason}")
        self.reason = reason
        self.status = status
        self.unreachable = unreachable


class ConnectTimeout(WireError):
    """Connecting took longer than the connect timeout."""


class ReadTimeout(WireError):
    """Nothing arrived for the idle timeout (``idle=True``), or the request ran out of time."""

    def __init__(self, message: str, *, idle: bool) -> None:
        super().__init__(message)
        self.idle = idle


Sink = Callable[[bytes], bool]
"""Takes body bytes in the network callback; True asks to stop pushing. It runs in a copy of
the context of the task that called ``pump``, so what it logs or measures carries the current
request's id and span, not those of the request that opened the connection (the network
callbacks of a kept-alive connection run in that one's context)."""


class StreamConnection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False  # the whole response body has arrived
        self.closed = False
        self.keep_alive = False
        self.error: WireError | None = None
        self.received = False  # any byte of the current response
        self._active = False  # a request is in flight (bytes outside one close the connection)
        self._informational = False  # parsing a 1xx response, skipped like aiohttp does
        self._head_bytes = 0  # bytes received before the head ended
        self._data: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None  # pump(): body bytes go here instead of to read()
        self._sink_context: contextvars.Context | None = None  # pump()'s caller's, for _sink
        self._sink_error: BaseException | None = None
        self.released_at = 0.0  # loop time the pool last took it back as idle
        self._idle: float | None = None
        self._last_data = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._total_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._active:
            self.close()  # bytes on an idle connection: nothing can be trusted on it
            return
        self.received = True
        if self._idle is not None:
            self._last_data = self.loop.time()
        if not self.head_done:
            if not self._feed_head(data):
                return
        else:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self._fail(BadResponse(f"the model server sent bad HTTP: {exc}"))
                return
        if self._sink is not None:
            if self._data:
                self._push()
            if self.complete:
                self._sink = None  # the answer is whole: the task takes over
            elif self._sink is not None:
                return  # the common case: a token relayed, no task woken
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: half-closed connections are not reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        if self._active and not self.complete and self.error is None:
            if exc is None and self.head_done and self._until_close():
                self.complete = True  # a body without length or chunks ends with the connection
            elif exc is not None:
                self.error = WireError(f"connection lost: {exc}")
            else:
                where = "before the body ended" if self.head_done else "before answering"
                self.error = WireError(f"the model server closed the connection {where}")
        self._wake()

    def pause_writing(self) -> None:  # the request is written in one go; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks ---------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._informational:
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self._data.append(body)
        self._buffered += len(body)
        if (
            self._buffered > _HIGH_WATER
            and not self._paused
            and self._sink is None
            and self.transport is not None
        ):
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self.headers = {}
            return
        self.complete = True

    # --- the request -------------------------------------------------------------------

    def send(self, request: bytes, total: float | None) -> None:
        """Write a whole request; ``total`` seconds later the response is cut off."""
        assert self.transport is not None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = {}
        self.head_done = self.complete = self.received = self._informational = False
        self._head_bytes = 0
        self.error = None
        self._data = []
        self._buffered = 0
        self._idle = None
        self._active = True
        if total is not None:
            self._total_timer = self.loop.call_later(total, self._total_expired, total)
        self.transport.write(request)

    async def read_head(self) -> None:
        """Wait for the status line and headers."""
        while not self.head_done:
            if self.error is not None:
                raise self.error
            self._waiter = waiter = self.loop.create_future()
            await waiter  # data_received or connection_lost sets it (a cancelled one is skipped)

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call; ``b""`` once the body has ended."""
        while True:
            if self._data:
                return self._take()
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            # Waited on here, not in a helper: one frame less to resume per token.
            self._waiter = waiter = self.loop.create_future()
            await waiter

    async def pump(self, sink: Sink) -> None:
        """Hand the body to ``sink`` as it arrives, from the network callback, until the body
        ends, fails, or ``sink`` returns True; then return (``read`` takes over: it reports
        the end or the failure, and returns what arrives after a stop). What ``sink``
        raises is raised here."""
        self._sink = sink
        # The network callbacks run in the context of the request that opened the
        # connection; the sink runs in this caller's (one copy per pump, not per read).
        self._sink_context = contextvars.copy_context()
        try:
            if self._data:
                self._push()  # what arrived before, first
            while self._sink is not None and self.error is None and not self.complete:
                self._waiter = waiter = self.loop.create_future()
                await waiter
        finally:
            self._sink = self._sink_context = None
            error, self._sink_error = self._sink_error, None
        if error is not None:
            raise error

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

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
        """From now on, fail a read after ``seconds`` without any data (one timer, re-armed
        only when it fires, so nothing is rescheduled per read). Time spent paused because
        the consumer reads slowly does not count."""
        if seconds:
            self._idle = seconds
            self._last_data = self.loop.time()
            self._idle_timer = self.loop.call_later(seconds, self._check_idle)

    @property
    def reusable(self) -> bool:
        """Whole answer read, nothing left over, keep-alive, healthy."""
        return (
            self.complete
            and self.keep_alive
            and not self.closed
            and self.error is None
            and not self._data
            and not self._paused
        )

    def close(self) -> None:
        self._cancel_timers()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def finish(self) -> None:
        """The request is over (kept or closed by the pool): its timers go."""
        self._cancel_timers()
        self._idle = None
        self._active = False
        self._sink = self._sink_context = None

    # --- internals ---------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # a reader that was cancelled left a done one behind
                waiter.set_result(None)

    def _push(self) -> None:
        """Hand the buffered body bytes to the sink; a sink that stops or raises goes."""
        sink, context = self._sink, self._sink_context
        assert sink is not None and context is not None
        try:
            if context.run(sink, self._take()):
                self._sink = None
        except Exception as exc:  # raised by pump(), in the task that owns the sink
            self._sink_error = exc
            self._sink = None

    def _take(self) -> bytes:
        """The buffered body bytes (there are some); reading resumes if it was paused."""
        data = self._data
        out = data[0] if len(data) == 1 else b"".join(data)
        data.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_data = self.loop.time()  # the idle clock restarts with reading
            self.transport.resume_reading()
        return out

    def _feed_head(self, data: bytes) -> bool:
        """Feed bytes while the head has not ended, counting them (the body's first bytes
        may come in the same read); False if the connection failed."""
        self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the model server sent bad HTTP: {exc}"))
            return False
        if not self.head_done and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(BadResponse(f"the model server sent a head over {MAX_HEAD_BYTES} bytes"))
            return False
        return True

    def _fail(self, error: WireError) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _until_close(self) -> bool:
        headers = self.headers
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def _total_expired(self, seconds: float) -> None:
        self._total_timer = None
        if not self.complete:
            self._fail(ReadTimeout(f"no whole answer within {seconds:g} s", idle=False))

    def _check_idle(self) -> None:
        self._idle_timer = None
        idle = self._idle
        if idle is None or self.complete or self.closed:
            return
        now = self.loop.time()
        if self._paused:  # we are not reading (slow consumer): silence is ours, not theirs
            self._last_data = now
        silent = now - self._last_data
        if silent >= idle:
            self._fail(ReadTimeout(f"nothing for {idle:g} s", idle=True))
        else:
            self._idle_timer = self.loop.call_later(idle - silent, self._check_idle)

    def _cancel_timers(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._total_timer is not None:
            self._total_timer.cancel()
            self._total_timer = None


class StreamPool:
    """Kept-alive ``StreamConnection``s per origin, for one event loop.

    At most ``limit`` connections carry a request at once; further requests wait for one to
    be released (``LLM_UPSTREAM_CONNECTIONS``).

    ``proxies`` decides which origins are reached through a proxy: plain http is sent to the
    proxy with the absolute URL as the request target; https goes through a ``CONNECT``
    tunnel, TLS with the model server inside it. A URL's userinfo is not sent (the client
    turns it into an ``Authorization`` header).

    An idle connection is reused for at most ``keepalive`` seconds after its last answer
    (``LLM_UPSTREAM_KEEPALIVE``; 0: never reused). A NAT or load balancer may drop an idle
    connection without a word (no FIN, no RST): a request sent on it would wait, unanswered,
    for the first-token timeout, and nothing tells that apart from a slow model. A server that
    closes an idle connection itself (FIN, RST) is noticed by ``connection_lost`` before
    reuse, or fails the request before any byte, which is then sent once more on a new
    connection."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float | None,
        limit: int = 2048,
        proxies: Proxies | None = None,
        keepalive: float = 4.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(limit)
        self.ssl_context = ssl_context
        self.proxies = proxies or Proxies()
        self.keepalive = keepalive
        # Idle connections per origin, in the order they were released (the newest last).
        self._idle: dict[Origin, list[StreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._routes: dict[Origin, Proxy | None] = {}  # the proxy of each origin (None: direct)
        self.closed = False

    def _target(self, url: str) -> tuple[Origin, bytes]:
        """(origin, start of the request head) of a URL, worked out once per URL; the head
        starts with the request line, ``Host`` and, to a proxy, ``Proxy-Authorization``."""
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            scheme = parts.scheme or "http"
            host = parts.hostname or "localhost"
            port = parts.port or (443 if scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            netloc = parts.netloc.rpartition("@")[2]
            origin = (scheme, host, port)
            proxy = self._routes[origin] = self.proxies.proxy_for(url)
            lines = []
            if proxy is not None and scheme == "http":
                # To a proxy, the absolute URL (RFC 9112, 3.2.2); through a tunnel, as direct.
                lines.append(f"POST http://{netloc}{path} HTTP/1.1\r\nHost: {netloc}\r\n")
                if proxy.authorization is not None:
                    lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
            else:
                lines.append(f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\n")
            target = self._targets[url] = (origin, "".join(lines).encode("latin-1"))
        return target

    async def open(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        total: float | None,
    ) -> StreamConnection:
        """POST ``body`` to ``url``; returns once the response's head has arrived.

        A kept-alive connection that turns out to be closed by the server before it answers
        is replaced by a new one once (the request never reached the model)."""
        origin, start = self._target(url)
        request = _request_head(start, headers, len(body)) + body
        await self._slots.acquire()
        try:
            return await self._open(origin, request, total)
        except BaseException:
            self._slots.release()
            raise

    async def _open(self, origin: Origin, request: bytes, total: float | None) -> StreamConnection:
        conn = self._pick(origin)
        if conn is not None:
            conn.send(request, total)
            try:
                await conn.read_head()
                return conn
            except WireError as exc:
                conn.close()
                if conn.received or isinstance(exc, ReadTimeout):
                    raise
                # A stale kept-alive connection (closed before any byte): the request never
                # reached the model, so it goes once more on a new connection below.
            except BaseException:
                conn.close()
                raise
        conn = await self._connect(origin)
        conn.send(request, total)
        try:
            await conn.read_head()
        except BaseException:
            conn.close()
            raise
        return conn

    def _pick(self, origin: Origin) -> StreamConnection | None:
        """The newest idle connection to ``origin`` if it is open and idle for at most
        ``keepalive`` seconds. The others met on the way are closed: a closed one is of no
        use, and when the newest has expired every older one has too."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.loop.time() - conn.released_at <= self.keepalive:
                return conn
            conn.close()
            for old in idle:
                old.close()
            idle.clear()
        return None

    def release(self, conn: StreamConnection) -> None:
        """Give back a connection that ``open`` returned (exactly once)."""
        self._slots.release()
        conn.finish()
        if conn.reusable and not self.closed and self.keepalive > 0:
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < _MAX_IDLE_PER_HOST:
                conn.released_at = conn.loop.time()
                idle.append(conn)
                if self._sweeper is None:
                    self._schedule_sweep(conn.loop)
                return
        conn.close()

    def _sweep(self) -> None:
        """Close the idle connections past ``keepalive`` (the front of each origin's list),
        so that sockets nobody will reuse do not pile up after a burst; look again a
        keepalive later while any are left."""
        self._sweeper = None
        loop: asyncio.AbstractEventLoop | None = None
        for origin, idle in list(self._idle.items()):
            if idle:
                loop = idle[0].loop
                oldest_kept = loop.time() - self.keepalive
                expired = 0
                while expired < len(idle) and idle[expired].released_at < oldest_kept:
                    idle[expired].close()
                    expired += 1
                del idle[:expired]
            if not idle:
                del self._idle[origin]
        if self._idle and loop is not None and not self.closed:
            self._schedule_sweep(loop)

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # In a context of its own: the sweep belongs to no request, and keeps none alive.
        self._sweeper = loop.call_later(self.keepalive, self._sweep, context=contextvars.Context())

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def aclose(self) -> None:
        """``close``, for callers that close either streaming transport."""
        self.close()

    async def _connect(self, origin: Origin) -> StreamConnection:
        proxy = self._routes.get(origin)
        if proxy is not None:
            return await self._connect_via(proxy, origin)
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self.ssl_context if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: StreamConnection(loop, origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(exc) from None
        except OSError as exc:
            raise ConnectFailed(exc) from None
        return conn

    async def _connect_via(self, proxy: Proxy, origin: Origin) -> StreamConnection:
        """A connection to ``origin`` through ``proxy``: to the proxy itself for plain http,
        a ``CONNECT`` tunnel with TLS inside it for https. Whatever fails before the
        tunnel is open is the proxy's fault (``ProxyError``); nothing is tried directly."""
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                try:
                    if scheme != "https":
                        _, conn = await loop.create_connection(
                            lambda: StreamConnection(loop, origin), proxy.host, proxy.port
                        )
                        return conn
                    raw, tunnel = await loop.create_connection(
                        lambda: _Tunnel(loop), proxy.host, proxy.port
                    )
                except OSError as exc:
                    raise ProxyError(os_reason(exc), unreachable=True) from None
                try:
                    raw.write(_connect_request(host, port, proxy))
                    status = await tunnel.answer()
                    if not 200 <= status < 300:  # any 2xx opens the tunnel (RFC 9110, 9.3.6)
                        raise ProxyError(f"answered CONNECT with {status}", status)
                    conn = StreamConnection(loop, origin)
                    tls = await loop.start_tls(raw, conn, self.ssl_context, server_hostname=host)
                except BaseException:
                    raw.close()
                    raise
        except TimeoutError:
            raise ProxyError("timed out", unreachable=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(exc) from None
        except OSError as exc:  # the TLS handshake with the model server, in the tunnel
            raise ConnectFailed(exc) from None
        if tls is None:
            raise ConnectFailed(ConnectionResetError("the tunnel closed during the handshake"))
        conn.connection_made(tls)  # start_tls hands over the transport without calling it
        return conn


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to ``CONNECT``: its status, once the head has arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._head = b""
        self._answer: asyncio.Future[int] = loop.create_future()

    async def answer(self) -> int:
        return await self._answer

    def data_received(self, data: bytes) -> None:
        if self._answer.done():
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._answer.set_exception(ProxyError("sent an endless answer to CONNECT"))
            return
        status_line = self._head.split(b"\r\n", 1)[0].split(None, 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
            self._answer.set_exception(ProxyError("answered CONNECT with what is not HTTP"))
        elif not status_line[1].isdigit():
            self._answer.set_exception(ProxyError("answered CONNECT with a bad status"))
        elif status_line[1].startswith(b"2") and end + 4 != len(self._head):
            # Nothing may come between the tunnel's opening and the server's TLS answer.
            self._answer.set_exception(ProxyError("sent data after opening the tunnel"))
        else:
            self._answer.set_result(int(status_line[1]))  # a refusal's body is not read

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_exception(ProxyError("closed the connection before answering"))


def _connect_request(host: str, port: int, proxy: Proxy) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _request_head(start: bytes, headers: Mapping[str, str], length: int) -> bytes:
    lines = [start, b"Content-Length: ", str(length).encode(), b"\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
