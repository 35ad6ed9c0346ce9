"""The one way to talk to a model server: OpenAI-compatible chat completions.

Streams go over the lean transport in ``wire.py`` (the per-token hot path), or over aiohttp
(``aiohttp_stream.py``) with ``transport="aiohttp"``, and come back as an
``UpstreamStream``; whole answers and small calls (``/v1/models``, ``/tokenize``) go over
aiohttp. Both share the replicas' failover (``failover.py``), the credentials (``auth.py``),
one TLS context (``tls.py``, with the client certificate of mutual TLS), one choice of
proxy (``proxy.py``) and one error mapping (``faults.py``). Credentials in a replica's URL
become an ``Authorization: Basic`` header on both paths, unless the auth gives one.

What a model server sends is read within limits (whole replies, error bodies, response
heads, stream lines) and never followed elsewhere (no redirects); the text of its errors
reaches clients and logs only through the client's ``Redactor`` (``redact.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from llm_service.context import session_key
from llm_service.errors import UpstreamError, UpstreamTimeout
from llm_service.settings import Settings
from llm_service.upstream import faults, proxy
from llm_service.upstream.aiohttp_stream import AiohttpStreamPool
from llm_service.upstream.auth import Auth, url_credentials
from llm_service.upstream.bounded import (
    ERROR_BODY_BYTES,
    ERROR_BODY_SECONDS,
    TooLarge,
    read_capped,
    read_error_body,
)
from llm_service.upstream.discovery import (
    DnsDiscovery,
    MetricsPoller,
    NameserverResolver,
    Resolver,
    SystemResolver,
)
from llm_service.upstream.failover import Replica, ReplicaSet
from llm_service.upstream.faults import message_of, os_reason
from llm_service.upstream.proxy import Proxies
from llm_service.upstream.redact import Redactor, safe_url
from llm_service.upstream.routing import LeastInflight, make_policy
from llm_service.upstream.sse import Chunk, ChunkParser
from llm_service.upstream.stream import StreamResponse, StreamTransport, UpstreamStream
from llm_service.upstream.tls import client_ssl_context
from llm_service.upstream.wire import (
    BadResponse,
    CertificateError,
    ConnectFailed,
    ConnectTimeout,
    ProxyError,
    ReadTimeout,
    StreamPool,
    WireError,
)

Transport = Literal["lean", "aiohttp"]

_FIELDS = Settings.model_fields
MAX_RESPONSE_BYTES: int = _FIELDS["max_upstream_response_bytes"].default
MAX_LINE_BYTES: int = _FIELDS["max_upstream_line_bytes"].default
# aiohttp's limits on a response head (whole answers, /v1/models, /tokenize): its status
# line and each header at most 8 KiB (its defaults, stated here), at most 64 headers, so a
# head is at most about 512 KiB. Model servers send fewer than 20 short headers.
MAX_HEAD_LINE = 8190
MAX_HEADERS = 64
_HEAD_LIMITS: dict[str, int] = {"max_line_size": MAX_HEAD_LINE, "max_field_size": MAX_HEAD_LINE}
if "max_headers" in inspect.signature(aiohttp.ClientSession).parameters:  # aiohttp >= 3.13.4
    _HEAD_LIMITS["max_headers"] = MAX_HEADERS  # (before it, a fixed 128 or more)
# aiohttp >= 3.10.10 tells DNS failures apart; before, they come as the resolver's gaierror.
_DNS_ERROR: type[Exception] = getattr(aiohttp, "ClientConnectorDNSError", socket.gaierror)


@dataclass(eq=False)
class Connections:
    """The connection pools of one event loop: aiohttp's and the streaming transport's."""

    session: aiohttp.ClientSession
    streams: StreamTransport[Any]

    async def aclose(self) -> None:
        await self.streams.aclose()
        await self.session.close()

    @property
    def closed(self) -> bool:
        return self.session.closed


class UpstreamClient:
    """A connection pool to one OpenAI-compatible model server (one or several replicas).

    The app's lifespan opens the shared pools with ``start`` and closes them with ``aclose``.
    Calls made on another event loop (a notebook, ``asyncio.run`` in a script, the sync API)
    use pools of their own for that loop, closed with the loop, so nothing leaks.

    ``base_url`` may name several replicas separated by commas (see ``failover.py``), or
    one host whose DNS addresses are the replicas (``replica_discovery="dns"``, looked up
    every ``replica_refresh`` seconds, by ``replica_dns_server`` if given). ``routing``
    picks the replica of each chat request (a policy of ``routing.py`` or its name);
    ``replica_metrics_interval`` > 0 polls the replicas' ``/metrics`` for their load (see
    ``discovery.py``). Once a chunk of a stream has been relayed nothing is retried.

    Timeouts: ``connect_timeout`` (TCP connect), ``first_token_timeout`` (request sent to the
    first chunk of a stream), ``idle_timeout`` (silence between chunks once a stream has
    started), ``total_timeout`` (the whole request). ``keepalive``: seconds an idle
    connection may be reused (0: never), in both pools.

    ``proxies`` (from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) choose the proxy of
    every request, the token endpoint's included; ``tls_client_cert`` and
    ``tls_client_key`` are the certificate shown to servers that ask for one.

    Limits on what the server sends: ``max_response_bytes`` (a whole answer or a JSON
    reply), ``max_line_bytes`` (one line of a stream); error bodies are read up to
    ``bounded.ERROR_BODY_BYTES`` and stream heads up to ``wire.MAX_HEAD_BYTES`` (with
    ``transport="aiohttp"``, aiohttp's limits, as for whole answers). Every text
    of the server's that ends in an error message goes through ``redactor`` first; the
    auth registers its secrets and tokens with it.
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
        keepalive: float = 4.0,
        tls_skip_verify: bool = False,
        tls_ca_bundle: str | Path | None = None,
        tls_client_cert: str | Path | None = None,
        tls_client_key: str | Path | None = None,
        proxies: Proxies | None = None,
        replica_cooldown: float = 10.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
        redactor: Redactor | None = None,
        routing: str | LeastInflight = "prefix_affinity",
        replica_discovery: str = "static",
        replica_refresh: float = 10.0,
        replica_dns_server: str | None = None,
        replica_metrics_interval: float = 0.0,
        transport: Transport = "lean",
    ) -> None:
        urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
        policy = make_policy(routing) if isinstance(routing, str) else routing
        self.replica_set = ReplicaSet(urls, cooldown=replica_cooldown, policy=policy)
        self.base_url = self.replicas[0].url
        self._discovery: DnsDiscovery | None = None
        if replica_discovery == "dns":
            resolver: Resolver = (
                NameserverResolver(replica_dns_server) if replica_dns_server else SystemResolver()
            )
            self._discovery = DnsDiscovery(
                self.replica_set, self.base_url, resolver, replica_refresh
            )
        elif replica_discovery != "static":
            raise ValueError(f"unknown replica discovery {replica_discovery!r}")
        self._poller: MetricsPoller | None = None
        if replica_metrics_interval > 0:
            self._poller = MetricsPoller(
                self.replica_set, replica_metrics_interval, self._metrics_of
            )
        self._background: list[asyncio.Task[None]] = []
        self.auth = auth or Auth()
        self.redactor = redactor or Redactor()
        self.proxies = proxies or Proxies()
        self.auth.bind(self.redactor, self.proxies)
        self.max_response_bytes = max_response_bytes
        self.max_line_bytes = max_line_bytes
        self.timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.connections = connections
        self.keepalive = keepalive
        if transport not in ("lean", "aiohttp"):
            raise ValueError(f"unknown streaming transport {transport!r}: lean or aiohttp")
        self.transport = transport
        self.ssl = client_ssl_context(
            skip_verify=tls_skip_verify,
            ca_bundle=tls_ca_bundle,
            client_cert=tls_client_cert,
            client_key=tls_client_key,
        )
        self._client_cert = tls_client_cert is not None
        self._shared: Connections | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._per_loop: dict[asyncio.AbstractEventLoop, Connections] = {}
        self._keepers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}

    @property
    def replicas(self) -> list[Replica]:
        """The replicas now (discovery may change them)."""
        return self.replica_set.replicas

    def __repr__(self) -> str:
        urls = ",".join(safe_url(r.url) for r in self.replicas)
        return f"UpstreamClient({urls!r}, auth={self.auth!r})"

    # --- connection pools, per event loop ---------------------------------------------------

    def _new_connections(self) -> Connections:
        return Connections(self._new_session(), self._new_stream_transport())

    def _new_session(self, **options: Any) -> aiohttp.ClientSession:
        """An aiohttp session towards the model server: whole answers and small calls, and
        streams with ``transport="aiohttp"`` (a session of their own, built here too, so
        both take the same connection, TLS, keep-alive and head settings)."""
        # aiohttp's own default keeps idle connections 15 s, longer than the model servers
        # do (5 s): the same limit as the streams' pool. It takes no 0: force_close is that.
        reuse: dict[str, Any] = (
            {"keepalive_timeout": self.keepalive} if self.keepalive > 0 else {"force_close": True}
        )
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, ssl=self.ssl, **reuse
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # model servers set no cookies worth keeping
            trust_env=False,  # the proxy is chosen per request (Proxies), as for streams
            **_HEAD_LIMITS,  # type: ignore[arg-type]  # (a dict of ints only)
            **options,
        )

    def _new_stream_transport(self) -> StreamTransport[Any]:
        """The streaming transport: a pool of its own of ``connections``, the same TLS
        context, proxies and keep-alive."""
        if self.transport == "aiohttp":
            session = self._new_session(trace_configs=AiohttpStreamPool.trace_configs())
            return AiohttpStreamPool(
                session, connect_timeout=self.connect_timeout, proxies=self.proxies
            )
        return StreamPool(
            ssl_context=self.ssl,
            connect_timeout=self.connect_timeout,
            limit=self.connections,
            proxies=self.proxies,
            keepalive=self.keepalive,
        )

    async def start(self) -> None:
        """Open the shared pools on the running loop and start the auth's background work
        (OAuth: fetch the token now, refresh it before it expires)."""
        if self._shared is None or self._shared.closed:
            self._shared = self._new_connections()
            self._loop = asyncio.get_running_loop()
            await self.auth.start(self._shared.session)
            await self._start_background()

    async def _start_background(self) -> None:
        """Replica discovery (one look-up now, so that the first requests spread) and the
        metrics polls, on the shared pools' loop until ``aclose``."""
        if self._background:
            return
        if self._discovery is not None:
            await self._discovery.refresh_once()
            self._background.append(asyncio.create_task(self._discovery.run()))
        if self._poller is not None:
            self._background.append(asyncio.create_task(self._poller.run()))

    async def aclose(self) -> None:
        """Close the shared pools (and the running loop's own)."""
        await self.auth.aclose()
        background, self._background = self._background, []
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.aclose()
        keeper = self._keepers.get(asyncio.get_running_loop())
        if keeper is not None:
            await keeper.aclose()

    async def _connections(self) -> Connections:
        """The shared pools on their loop, else the ones kept for the running loop.

        Other loops get pools of their own on first use, kept for later calls on that loop
        and closed when the loop shuts down its async generators (``asyncio.run`` does,
        before it closes the loop).
        """
        loop = asyncio.get_running_loop()
        shared = self._shared
        if shared is not None and not shared.closed and self._loop is loop:
            return shared
        own = self._per_loop.get(loop)
        if own is None or own.closed:
            own = self._per_loop[loop] = self._new_connections()
            # An async generator first iterated on this loop is closed by the loop's
            # shutdown_asyncgens(): it then closes the pools.
            keeper = self._keep(loop, own)
            self._keepers[loop] = keeper
            await anext(keeper)
        return own

    async def _keep(
        self, loop: asyncio.AbstractEventLoop, own: Connections
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self._per_loop.pop(loop, None)
            self._keepers.pop(loop, None)
            await own.aclose()

    # --- requests ----------------------------------------------------------------------------

    async def _headers(
        self,
        session: aiohttp.ClientSession,
        extra: Mapping[str, str] | None,
        basic: str | None = None,
    ) -> dict[str, str]:
        """The request's headers; ``basic``, from the URL's userinfo, only when the auth
        gives no ``Authorization`` (LLM_VLLM_API_KEY and OAuth win)."""
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        headers.update(await self.auth.headers(session))
        if basic is not None and "Authorization" not in headers:
            headers["Authorization"] = basic
        if extra:
            headers.update(extra)  # X-Request-ID, traceparent
        return headers

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        data: bytes | None,
        limits: aiohttp.ClientTimeout | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request over aiohttp; a 401 refreshes the credentials once and sends it
        once more. Returns a 2xx response (its body unread)."""
        retried = False
        redact = self.redactor
        url, basic = url_credentials(url)
        while True:
            headers = await self._headers(session, extra_headers, basic)
            try:
                resp = await session.request(
                    method,
                    url,
                    data=data,
                    timeout=limits or self.timeout,
                    allow_redirects=False,  # a redirect would carry the prompt and the key away
                    **self.proxies.aiohttp_kwargs(url, headers),
                )
            except aiohttp.ClientProxyConnectionError as exc:
                raise proxy.unreachable(os_reason(exc.os_error)) from None
            except aiohttp.ClientHttpProxyError as exc:
                raise proxy.refused(exc.status) from None
            except aiohttp.ConnectionTimeoutError:
                raise faults.connect_timeout(self.connect_timeout) from None
            except TimeoutError:
                limit = (
                    f"{limits.total:g} s"
                    if limits is not None
                    else f"LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
                )
                raise faults.request_timeout(limit) from None
            except aiohttp.ClientConnectorCertificateError as exc:
                raise faults.untrusted(exc.certificate_error) from None
            except _DNS_ERROR as exc:
                raise faults.unreachable(exc, redact, reason="DNS lookup failed") from None
            except aiohttp.ClientConnectorError as exc:
                raise faults.unreachable(exc.os_error, redact) from None
            except aiohttp.ClientResponseError as exc:  # not HTTP, or a head past the limits
                raise faults.bad_http(exc.message, redact) from None
            except aiohttp.ClientConnectionError as exc:  # closed or reset before the answer
                raise self._closed_early(url, exc) from None
            except aiohttp.ClientError as exc:
                raise faults.broke(exc, redact) from None
            if resp.status < 300:
                return resp
            if resp.status < 400:
                resp.close()
                raise faults.redirected(resp.status)
            if resp.status == 407:  # only a proxy asks for proxy credentials
                resp.close()
                raise proxy.refused(407)
            try:
                body = await read_error_body(resp)
            finally:
                resp.close()  # what was not read stays unread: the connection goes
            if resp.status == 401 and not retried and await self.auth.refresh(session, headers):
                retried = True
                continue
            raise faults.status_error(resp.status, body, resp.headers.get("Retry-After"), redact)

    def _closed_early(self, url: str, exc: Exception) -> faults.ReplicaFailed:
        """The connection broke before the answer. Over TLS that is also how a server that
        requires a client certificate refuses one (TLS 1.3 finishes the client's handshake
        before the server checks it, and the alert is not reported): the message says so."""
        fault = faults.broke(exc, self.redactor)
        if not url.startswith("https:"):
            return fault
        advice = (
            "check that LLM_TLS_CLIENT_CERT is signed by a CA it trusts"
            if self._client_cert
            else "set LLM_TLS_CLIENT_CERT (and LLM_TLS_CLIENT_KEY)"
        )
        return faults.ReplicaFailed(
            f"{fault.message} (if the server requires a TLS client certificate, {advice})"
        )

    async def chat(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> Chunk:
        """A whole (non-streamed) chat completion."""
        data = orjson.dumps({**payload, "stream": False})
        key = self.replica_set.policy.key(payload, session_key.get())
        session = (await self._connections()).session

        async def attempt(replica: Replica) -> bytes:
            with replica.busy():
                resp = await self._request(
                    session, "POST", replica.chat_url, data, extra_headers=headers
                )
                try:
                    return await self._read_reply(resp)
                except TimeoutError:
                    raise faults.request_timeout(
                        f"LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
                    ) from None

        body = await self.replica_set.call(attempt, key)
        try:
            result = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("model server sent a reply that is not JSON") from None
        if not isinstance(result, dict) or not result.get("choices"):
            message = message_of(result, body, self.redactor)
            raise UpstreamError(f"model server sent no choices: {message}")
        return result

    async def _read_reply(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body of a 2xx reply, up to ``max_response_bytes``; the response is done with
        afterwards (a reply cut off closes its connection)."""
        try:
            body = await read_capped(resp, self.max_response_bytes)
        except TooLarge:
            resp.close()
            raise faults.too_large(self.max_response_bytes) from None
        except aiohttp.ClientError as exc:
            resp.close()
            fault = faults.broke(exc, self.redactor)  # logs the details
            # An answer that broke off after it began is not asked of another replica.
            raise UpstreamError(fault.message) from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        return body

    async def open_stream(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> UpstreamStream:
        """Send a streamed chat completion and return once its first chunks are in.

        Everything that can fail before an answer starts fails here, with a status code for
        the caller: the failover tries the next replica on a replica fault, and the
        first-token deadline covers connecting, auth and the wait for the first chunk."""
        data = orjson.dumps({**payload, "stream": True})
        key = self.replica_set.policy.key(payload, session_key.get())
        connections = await self._connections()

        async def attempt(replica: Replica) -> UpstreamStream:
            replica.in_flight += 1
            stream: UpstreamStream | None = None
            try:
                async with asyncio.timeout(self.first_token_timeout):
                    conn = await self._send_stream(connections, replica, data, headers)
                    stream = UpstreamStream(
                        conn,
                        connections.streams,
                        replica,
                        (self.idle_timeout, self.total_timeout),
                        ChunkParser(self.max_line_bytes, self.redactor),
                    )
                    stream.first = await stream.next()
            except TimeoutError:  # only the first-chunk deadline ends up here
                self._abandon(stream, replica)
                raise UpstreamTimeout(
                    "model server sent no first token within "
                    f"LLM_FIRST_TOKEN_TIMEOUT={self.first_token_timeout:g} s"
                ) from None
            except BaseException:
                self._abandon(stream, replica)
                raise
            stream.idle_timeout(self.idle_timeout)
            return stream

        return await self.replica_set.call(attempt, key)

    @staticmethod
    def _abandon(stream: UpstreamStream | None, replica: Replica) -> None:
        if stream is not None:
            stream.close()  # gives back the replica's slot too
        else:
            replica.in_flight -= 1

    async def _send_stream(
        self,
        connections: Connections,
        replica: Replica,
        data: bytes,
        extra_headers: Mapping[str, str] | None,
    ) -> StreamResponse:
        """Send a streamed request over the streaming transport; returns once the head of a
        successful answer has arrived. Errors map as in ``_request`` (a 401 refreshes the
        credentials once and sends the request once more); both transports raise the same
        exceptions, so both map here, to the same messages."""
        session, pool = connections.session, connections.streams
        redact = self.redactor
        retried = False
        url, basic = url_credentials(replica.chat_url)
        while True:
            headers = await self._headers(session, extra_headers, basic)
            try:
                conn: StreamResponse = await pool.open(url, data, headers, total=self.total_timeout)
            except ProxyError as exc:
                if exc.status is not None:
                    raise proxy.refused(exc.status) from None
                if exc.unreachable:
                    raise proxy.unreachable(exc.reason) from None
                raise proxy.failed(exc.reason) from None
            except ConnectTimeout:
                raise faults.connect_timeout(self.connect_timeout) from None
            except CertificateError as exc:
                raise faults.untrusted(exc) from None
            except ConnectFailed as exc:
                raise faults.unreachable(exc.os_error, redact) from None
            except ReadTimeout:
                raise faults.request_timeout(
                    f"LLM_REQUEST_TIMEOUT={self.total_timeout:g} s"
                ) from None
            except BadResponse as exc:
                raise faults.bad_http(exc, redact) from None
            except WireError as exc:
                raise self._closed_early(url, exc) from None
            if conn.status < 300:
                return conn
            if conn.status < 400 or conn.status == 407:
                pool.release(conn)  # its body unread: the connection is closed
                if conn.status == 407:  # only a proxy asks for proxy credentials
                    raise proxy.refused(407)
                raise faults.redirected(conn.status)
            try:
                async with asyncio.timeout(ERROR_BODY_SECONDS):
                    body = await conn.read_upto(ERROR_BODY_BYTES)
            except (WireError, TimeoutError):
                body = b""
            finally:
                pool.release(conn)  # closed unless the whole (short) body was read
            if conn.status == 401 and not retried and await self.auth.refresh(session, headers):
                retried = True
                continue
            raise faults.status_error(conn.status, body, conn.headers.get("retry-after"), redact)

    async def stream_chat(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[list[Chunk], None]:
        """Parsed ``chat.completion.chunk`` dicts, one list per network read; the upstream
        response is closed the moment the consumer stops."""
        stream = await self.open_stream(payload, headers)
        try:
            if stream.first:
                yield stream.first
            while batch := await stream.next():
                yield batch
        finally:
            stream.close()

    async def _metrics_of(self, url: str) -> bytes:
        """The body of a replica's ``/metrics`` (for the metrics polls)."""
        limits = aiohttp.ClientTimeout(total=5.0, sock_connect=self.connect_timeout)
        session = (await self._connections()).session
        try:
            resp = await self._request(session, "GET", url, None, limits)
            return await self._read_reply(resp)
        except TimeoutError:
            raise UpstreamTimeout("model server did not answer /metrics in time") from None

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
        session = (await self._connections()).session

        async def attempt(replica: Replica) -> bytes:
            try:
                resp = await self._request(session, method, f"{replica.url}{path}", data, limits)
                return await self._read_reply(resp)
            except TimeoutError:
                raise UpstreamTimeout(f"model server did not answer {path} in time") from None

        raw = await self.replica_set.call(attempt)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"model server sent non-JSON from {path}") from None
