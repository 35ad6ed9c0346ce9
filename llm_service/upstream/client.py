"""The one way to talk to a model server: OpenAI-compatible chat completions.

``stream_chat`` sends the request, parses the SSE reply with orjson and yields the parsed
chunks of each network read as one batch, so that the consumer can write them in one send.
The upstream response is closed the moment the consumer stops (client gone, error, end),
so the model server stops generating for nobody. Streams go over the lean transport in
``wire.py`` (the per-token hot path); whole answers and small calls over aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from llm_service.errors import (
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_status_error,
)
from llm_service.upstream.auth import Auth
from llm_service.upstream.wire import (
    CertificateError,
    ConnectFailed,
    ConnectTimeout,
    ReadTimeout,
    StreamConnection,
    StreamPool,
    WireError,
)

log = logging.getLogger(__name__)

Chunk = dict[str, Any]

_DONE = b"[DONE]"


@dataclass(eq=False)
class Replica:
    """One URL of the model server, with its load and health as this process sees them."""

    url: str
    chat_url: str
    in_flight: int = 0  # requests sent to it and not finished
    down_until: float = 0.0  # monotonic time until which it is left out after a failure


class ReplicaUnavailable(UpstreamUnavailable):
    """This replica is unreachable or overloaded (connect error, 429, 503): another may answer."""


class ReplicaTimeout(UpstreamTimeout):
    """Connecting to this replica timed out: another may answer."""


class ReplicaFailed(UpstreamError):
    """This replica failed (500, 502, the stream broke before its first chunk)."""


_REPLICA_FAULTS = (ReplicaUnavailable, ReplicaTimeout, ReplicaFailed)

BatchSink = Callable[[list[Chunk]], bool]
"""Push mode of ``stream_chat``: takes each batch in the network callback; True: stop."""


class ChunkParser:
    """The SSE body of a streamed chat completion, fed as it arrives, to chunk dicts.

    ``feed`` returns the complete chunks of what it was given (a line split across reads
    waits for its end). ``data: [DONE]`` sets ``finished``; a malformed chunk or an error
    object sets ``failure``, and nothing after it is parsed. ``tail`` is the last batch."""

    __slots__ = ("buffer", "failure", "finished", "tail")

    def __init__(self) -> None:
        self.buffer = b""
        self.finished = False
        self.failure: UpstreamError | None = None
        self.tail: list[Chunk] = []

    @property
    def ended(self) -> bool:
        return self.finished or self.failure is not None

    def feed(self, data: bytes) -> list[Chunk]:
        buffer = self.buffer + data if self.buffer else data
        if b"\n" not in data:
            self.buffer = buffer
            return []
        lines = buffer.split(b"\n")
        self.buffer = lines.pop()
        batch: list[Chunk] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event/id fields
            body = line[5:].strip()
            if body == _DONE:
                self.finished = True
                break
            try:
                chunk = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.failure = UpstreamError("model server sent a malformed stream chunk")
                break
            if "error" in chunk or chunk.get("object") == "error":
                message = _message_of(chunk, body)
                self.failure = UpstreamError(f"model server failed mid-stream: {message}")
                break
            batch.append(chunk)
        if batch:
            self.tail = batch
        return batch


class UpstreamClient:
    """A connection pool to one OpenAI-compatible model server (one or several replicas).

    The app's lifespan opens one shared ``aiohttp.ClientSession`` with ``start`` and closes
    it with ``aclose``. Calls made on another event loop (a notebook, ``asyncio.run`` in a
    script, the sync API) use a session of their own for that call, so nothing leaks.

    ``base_url`` may name several replicas separated by commas. Each request goes to the
    replica with the fewest requests in flight (ties take turns); a replica that fails is
    left out for ``replica_cooldown`` seconds, and a request that fails before its first
    chunk is sent again to another replica. Once a chunk has been relayed nothing is retried.

    Timeouts: ``connect_timeout`` (TCP connect), ``first_token_timeout`` (request sent to the
    first chunk of a stream), ``idle_timeout`` (silence between chunks once a stream has
    started), ``total_timeout`` (the whole request).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        auth: Auth | None = None,
        connect_timeout: float = 10.0,
        total_timeout: float = 300.0,
        first_token_timeout: float | None = None,
        idle_timeout: float | None = None,
        connections: int = 512,
        tls_skip_verify: bool = False,
        tls_ca_bundle: str | Path | None = None,
        replica_cooldown: float = 10.0,
    ) -> None:
        urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
        self.replicas = [
            Replica(url, f"{url}/v1/chat/completions")
            for url in (u.strip().rstrip("/") for u in urls)
            if url
        ]
        if not self.replicas:
            raise ValueError("no model server URL")
        self.base_url = self.replicas[0].url
        self.chat_url = self.replicas[0].chat_url
        self.auth = auth or Auth()
        self.timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.replica_cooldown = replica_cooldown
        self.connections = connections
        self.ssl: ssl.SSLContext | bool = not tls_skip_verify
        if tls_ca_bundle is not None and not tls_skip_verify:
            self.ssl = ssl.create_default_context(cafile=str(tls_ca_bundle))
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lazy: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._pools: dict[aiohttp.ClientSession, StreamPool] = {}  # streams, per session
        self._keepers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}

    def __repr__(self) -> str:
        urls = ",".join(r.url for r in self.replicas)
        return f"UpstreamClient({urls!r}, auth={self.auth!r})"

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, ssl=self.ssl
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # model servers set no cookies worth keeping
        )
        self._pools[session] = StreamPool(
            ssl_context=self.ssl, connect_timeout=self.connect_timeout, limit=self.connections
        )
        return session

    async def _close_session(self, session: aiohttp.ClientSession) -> None:
        pool = self._pools.pop(session, None)
        if pool is not None:
            pool.close()
        await session.close()

    async def start(self) -> None:
        """Open the shared connection pool on the running loop and start the auth's
        background work (OAuth: fetch the token now, refresh it before it expires)."""
        if self._session is None or self._session.closed:
            self._session = self._new_session()
            self._loop = asyncio.get_running_loop()
            await self.auth.start(self._session)

    async def aclose(self) -> None:
        """Close the shared connection pool (and the running loop's own session)."""
        await self.auth.aclose()
        session, self._session = self._session, None
        if session is not None:
            await self._close_session(session)
        keeper = self._keepers.get(asyncio.get_running_loop())
        if keeper is not None:
            await keeper.aclose()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The shared session on its loop, else one kept for the running loop.

        Other loops (a notebook's, ``asyncio.run`` in a script) get a session of their own
        on first use, kept for later calls on that loop and closed when the loop shuts down
        its async generators (``asyncio.run`` does, before it closes the loop).
        """
        loop = asyncio.get_running_loop()
        shared = self._session
        if shared is None or shared.closed or self._loop is not loop:
            shared = self._lazy.get(loop)
            if shared is None or shared.closed:
                shared = self._lazy[loop] = self._new_session()
                # An async generator first iterated on this loop is closed by the loop's
                # shutdown_asyncgens() (asyncio.run does that): it then closes the session.
                keeper = self._keep(loop, shared)
                self._keepers[loop] = keeper
                await anext(keeper)
        yield shared

    async def _keep(
        self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self._lazy.pop(loop, None)
            self._keepers.pop(loop, None)
            await self._close_session(session)

    # --- replicas ------------------------------------------------------------------------

    def _pick(self, tried: Sequence[Replica]) -> Replica | None:
        """The untried replica with the fewest requests in flight (cooled-down ones last)."""
        replicas = self.replicas
        if len(replicas) == 1:
            return None if tried else replicas[0]
        now = time.monotonic()
        count = len(replicas)
        turn = self._turn
        self._turn = (turn + 1) % count
        best: Replica | None = None
        best_key: tuple[bool, float] = (True, 0.0)
        for i in range(count):
            replica = replicas[(turn + i) % count]
            if replica in tried:
                continue
            down = replica.down_until > now
            key = (down, replica.down_until if down else float(replica.in_flight))
            if best is None or key < best_key:
                best, best_key = replica, key
        return best

    def _failed(self, replica: Replica, exc: UpstreamError) -> None:
        if len(self.replicas) > 1:
            replica.down_until = time.monotonic() + self.replica_cooldown
            log.warning(
                "replica %s failed (%s); left out for %.0f s",
                replica.url, exc.message, self.replica_cooldown,
            )  # fmt: skip

    # --- requests ------------------------------------------------------------------------

    async def _headers(
        self, session: aiohttp.ClientSession, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        headers.update(await self.auth.headers(session))
        if extra:
            headers.update(extra)  # issue 8: X-Request-ID, traceparent
        return headers

    def _connect_timeout_error(self) -> ReplicaTimeout:
        return ReplicaTimeout(
            f"timed out connecting to the model server "
            f"(LLM_CONNECT_TIMEOUT={self.connect_timeout:g} s)"
        )

    @staticmethod
    def _untrusted_error(detail: object) -> UpstreamError:
        return UpstreamError(
            f"model server's TLS certificate is not trusted ({detail}); "
            "set LLM_TLS_CA_BUNDLE to its CA (or LLM_TLS_SKIP_VERIFY=True)"
        )

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        data: bytes | None,
        limits: aiohttp.ClientTimeout | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request; a 401 refreshes the credentials once and sends it once more."""
        retried = False
        while True:
            headers = await self._headers(session, extra_headers)
            try:
                resp = await session.request(
                    method, url, data=data, headers=headers, timeout=limits or self.timeout
                )
            except aiohttp.ConnectionTimeoutError:
                raise self._connect_timeout_error() from None
            except TimeoutError:
                limit = (
                    f"{limits.total:g} s"
                    if limits is not None
                    else f"LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
                )
                raise UpstreamTimeout(f"model server did not answer within {limit}") from None
            except aiohttp.ClientConnectorCertificateError as exc:
                raise self._untrusted_error(exc.certificate_error) from None
            except aiohttp.ClientConnectorError as exc:
                raise ReplicaUnavailable(f"model server unreachable: {exc.os_error}") from None
            except aiohttp.ClientError as exc:
                raise ReplicaUnavailable(f"model server connection failed: {exc}") from None
            if resp.status < 400:
                return resp
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                resp.release()
            if resp.status == 401 and not retried and await self.auth.refresh(session, headers):
                retried = True
                continue
            raise _status_error(resp.status, body, resp.headers.get("Retry-After"))

    async def chat(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> Chunk:
        """A whole (non-streamed) chat completion."""
        data = orjson.dumps({**payload, "stream": False})
        tried: list[Replica] = []
        async with self.session() as session:
            while (replica := self._pick(tried)) is not None:
                tried.append(replica)
                replica.in_flight += 1
                try:
                    resp = await self._request(
                        session, "POST", replica.chat_url, data, extra_headers=headers
                    )
                    try:
                        body = await resp.read()
                    except TimeoutError:
                        raise UpstreamTimeout(
                            "model server did not answer within "
                            f"LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
                        ) from None
                    except aiohttp.ClientError as exc:
                        raise UpstreamError(f"model server connection broke: {exc}") from None
                    finally:
                        resp.release()
                    break
                except _REPLICA_FAULTS as exc:
                    self._failed(replica, exc)
                    if len(tried) >= len(self.replicas):
                        raise
                finally:
                    replica.in_flight -= 1
        try:
            result = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("model server sent a reply that is not JSON") from None
        if not isinstance(result, dict) or not result.get("choices"):
            raise UpstreamError(f"model server sent no choices: {_message_of(result, body)}")
        return result

    async def _open_stream(
        self,
        session: aiohttp.ClientSession,
        pool: StreamPool,
        replica: Replica,
        data: bytes,
        extra_headers: Mapping[str, str] | None,
    ) -> StreamConnection:
        """Send a streamed request over the lean transport; returns once the head of a
        successful answer has arrived. Errors map as in ``_request`` (a 401 refreshes the
        credentials once and sends the request once more)."""
        retried = False
        while True:
            headers = await self._headers(session, extra_headers)
            try:
                conn = await pool.open(replica.chat_url, data, headers, total=self.total_timeout)
            except ConnectTimeout:
                raise self._connect_timeout_error() from None
            except CertificateError as exc:
                raise self._untrusted_error(exc) from None
            except ConnectFailed as exc:
                raise ReplicaUnavailable(f"model server unreachable: {exc.os_error}") from None
            except ReadTimeout:
                raise UpstreamTimeout(
                    f"model server did not answer within "
                    f"LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
                ) from None
            except WireError as exc:
                raise ReplicaUnavailable(f"model server connection failed: {exc}") from None
            if conn.status < 400:
                return conn
            try:
                body = await conn.read_all()
            except WireError:
                body = b""
            finally:
                pool.release(conn)
            if conn.status == 401 and not retried and await self.auth.refresh(session, headers):
                retried = True
                continue
            raise _status_error(conn.status, body, conn.headers.get("retry-after"))

    def _read_timeout_error(self, exc: ReadTimeout) -> UpstreamTimeout:
        if exc.idle:
            return UpstreamTimeout(
                f"model server sent nothing for LLM_IDLE_TIMEOUT={self.idle_timeout:g} s"
            )
        return UpstreamTimeout(
            f"model server stream exceeded LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
        )

    async def stream_chat(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[list[Chunk], BatchSink | None]:
        """Parsed ``chat.completion.chunk`` dicts, one list per network read.

        Push mode: ``asend`` a ``BatchSink`` instead of calling ``anext`` and the batches
        that follow go to it from the connection's network callback, with no task woken per
        read, until the answer ends (``asend`` then raises ``StopAsyncIteration``, or the
        stream's error), or the sink returns True (``asend`` then returns the next batch,
        pulled as usual). Only after the first batch: retries and the first-chunk deadline
        are unchanged."""
        data = orjson.dumps({**payload, "stream": True})
        tried: list[Replica] = []
        async with self.session() as session:
            pool = self._pools[session]
            while (replica := self._pick(tried)) is not None:
                tried.append(replica)
                replica.in_flight += 1
                first = True
                try:
                    # The first-chunk deadline covers connecting, auth and the wait for the
                    # first chunk; it is switched off before anything is yielded.
                    async with asyncio.timeout(self.first_token_timeout) as deadline:
                        conn = await self._open_stream(session, pool, replica, data, headers)
                        parser = ChunkParser()
                        try:
                            while not parser.ended:
                                try:
                                    data_in = await conn.read()
                                except ReadTimeout as exc:
                                    raise self._read_timeout_error(exc) from None
                                except WireError as exc:
                                    raise ReplicaFailed(
                                        f"model server stream broke: {exc}"
                                    ) from None
                                if not data_in:
                                    break
                                batch = parser.feed(data_in)
                                if not batch:
                                    continue
                                if first:
                                    first = False
                                    deadline.reschedule(None)
                                    conn.idle_timeout(self.idle_timeout)
                                sink = yield batch  # what came before a failure is relayed
                                if sink is not None and not parser.ended:
                                    await self._pump(conn, parser, sink)
                            if parser.failure is not None:
                                raise parser.failure
                            if parser.finished:
                                # Read the body's end too, so the connection goes back to
                                # the pool for the next request instead of being closed.
                                with contextlib.suppress(WireError):
                                    while await conn.read():
                                        pass
                                return
                            if any(
                                c.get("choices") and c["choices"][0].get("finish_reason")
                                for c in parser.tail
                            ):
                                return  # no [DONE] but a finish reason: complete
                            raise ReplicaFailed(
                                "model server closed the stream before the answer ended"
                            )
                        finally:
                            # Kept for the next request if the body was read to its end,
                            # else closed: the model server stops generating at once.
                            pool.release(conn)
                except TimeoutError:  # only the first-chunk deadline ends up here
                    raise UpstreamTimeout(
                        "model server sent no first token within "
                        f"LLM_FIRST_TOKEN_TIMEOUT={self.first_token_timeout:g} s"
                    ) from None
                except _REPLICA_FAULTS as exc:
                    if not first:
                        raise  # chunks were relayed: never retried
                    self._failed(replica, exc)
                    if len(tried) >= len(self.replicas):
                        raise
                finally:
                    replica.in_flight -= 1

    @staticmethod
    async def _pump(conn: StreamConnection, parser: ChunkParser, sink: BatchSink) -> None:
        """Push mode of ``stream_chat``: each read parsed and handed on in the network
        callback. Returns when the answer ended or failed, or ``sink`` asked to stop: the
        pull loop then reports the end or the connection's error."""

        def deliver(data: bytes) -> bool:
            batch = parser.feed(data)
            if batch and sink(batch):
                return True
            return parser.ended

        await conn.pump(deliver)

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` to ``path`` (e.g. ``/tokenize``) and return the parsed JSON reply."""
        return await self._json_call("POST", path, orjson.dumps(body), limit_s=10.0)

    async def models(self) -> Chunk:
        """``GET /v1/models``: used for readiness and to learn the served model."""
        result = await self._json_call("GET", "/v1/models", None, limit_s=5.0)
        return result if isinstance(result, dict) else {"data": result}

    async def _json_call(
        self, method: str, path: str, data: bytes | None, *, limit_s: float
    ) -> Any:
        """A small request/response exchange, with the same error mapping as chat calls.

        With several replicas, the first that answers does (readiness: any replica up)."""
        limits = aiohttp.ClientTimeout(total=limit_s, sock_connect=self.connect_timeout)
        tried: list[Replica] = []
        async with self.session() as session:
            while (replica := self._pick(tried)) is not None:
                tried.append(replica)
                try:
                    resp = await self._request(
                        session, method, f"{replica.url}{path}", data, limits
                    )
                    try:
                        raw = await resp.read()
                    finally:
                        resp.release()
                    break
                except TimeoutError:
                    raise UpstreamTimeout(f"model server did not answer {path} in time") from None
                except aiohttp.ClientError as exc:
                    raise UpstreamUnavailable(f"model server unreachable: {exc}") from None
                except _REPLICA_FAULTS as exc:
                    self._failed(replica, exc)
                    if len(tried) >= len(self.replicas):
                        raise
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"model server sent non-JSON from {path}") from None

    async def wait_until_answers(self, max_wait: float, *, first_delay: float = 0.5) -> bool:
        """Ask ``/v1/models`` with backoff (0.5 s doubling, at most 10 s between tries) until
        the model server answers or ``max_wait`` seconds have passed; True if it answered."""
        deadline = time.monotonic() + max_wait
        delay = first_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                models = await self.models()
            except ServiceError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error(
                        "model server did not answer within LLM_STARTUP_WAIT=%g s (%s); "
                        "serving anyway, /v1/ready answers 503 until it does",
                        max_wait, exc.message,
                    )  # fmt: skip
                    return False
                log.info(
                    "waiting for the model server (attempt %d: %s); next try in %.1f s",
                    attempt, exc.message, min(delay, left),
                )  # fmt: skip
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 10.0)
                continue
            served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
            log.info("model server answers after %d attempt(s); serves %s", attempt, served)
            return True


def _message_of(parsed: Any, raw: bytes) -> str:
    """The error message in vLLM's, OpenAI's, TGI's or llama.cpp's error shape."""
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if "detail" in parsed:
            return str(parsed["detail"])
    return raw[:300].decode("utf-8", "replace") or "(empty body)"


def _status_error(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    message = f"model server answered {status}: {_message_of(parsed, body)}"
    if status in (429, 503):
        return ReplicaUnavailable(message, retry_after=retry_after or "1")
    if status in (500, 502):
        return ReplicaFailed(message)
    return upstream_status_error(status, message, retry_after)
