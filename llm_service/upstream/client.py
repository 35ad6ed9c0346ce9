"""The one way to talk to a model server: OpenAI-compatible chat completions over aiohttp.

``stream_chat`` sends the request, parses the SSE reply with orjson and yields the parsed
chunks of each network read as one batch, so that the consumer can write them in one send.
The upstream response is closed the moment the consumer stops (client gone, error, end),
so the model server stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from llm_service.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_status_error,
)
from llm_service.upstream.auth import Auth

Chunk = dict[str, Any]

_DONE = b"[DONE]"


class UpstreamClient:
    """A connection pool to one OpenAI-compatible model server.

    The app's lifespan opens one shared ``aiohttp.ClientSession`` with ``start`` and closes
    it with ``aclose``. Calls made on another event loop (a notebook, ``asyncio.run`` in a
    script, the sync API) use a session of their own for that call, so nothing leaks.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        connect_timeout: float = 10.0,
        total_timeout: float = 300.0,
        connections: int = 512,
        tls_skip_verify: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.chat_url = f"{self.base_url}/v1/chat/completions"
        self.auth = auth or Auth()
        self.timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self.connections = connections
        self.ssl: ssl.SSLContext | bool = not tls_skip_verify
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lazy: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._keepers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, ssl=self.ssl
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # model servers set no cookies worth keeping
        )

    async def start(self) -> None:
        """Open the shared connection pool on the running loop."""
        if self._session is None or self._session.closed:
            self._session = self._new_session()
            self._loop = asyncio.get_running_loop()

    async def aclose(self) -> None:
        """Close the shared connection pool (and the running loop's own session)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        keeper = self._keepers.get(asyncio.get_running_loop())
        if keeper is not None:
            await keeper.aclose()
        await self.auth.aclose()

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
            await session.close()

    async def _headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        headers.update(await self.auth.headers(session))
        return headers

    async def _post(
        self,
        session: aiohttp.ClientSession,
        payload: Mapping[str, Any],
        extra_headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        headers = await self._headers(session)
        if extra_headers:
            headers.update(extra_headers)  # e.g. X-Request-ID, traceparent
        try:
            resp = await session.post(self.chat_url, data=orjson.dumps(payload), headers=headers)
        except TimeoutError:
            raise UpstreamTimeout("timed out connecting to the model server") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(f"model server unreachable: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"model server connection failed: {exc}") from None
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                resp.release()
            raise _status_error(resp.status, body, resp.headers.get("Retry-After"))
        return resp

    async def chat(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> Chunk:
        """A whole (non-streamed) chat completion."""
        async with self.session() as session:
            resp = await self._post(session, {**payload, "stream": False}, headers)
            try:
                body = await resp.read()
            except TimeoutError:
                raise UpstreamTimeout("model server did not answer in time") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"model server connection broke: {exc}") from None
            finally:
                resp.release()
        try:
            result = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("model server sent a reply that is not JSON") from None
        if not isinstance(result, dict) or not result.get("choices"):
            raise UpstreamError(f"model server sent no choices: {_message_of(result, body)}")
        return result

    async def stream_chat(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[list[Chunk]]:
        """Parsed ``chat.completion.chunk`` dicts, one list per network read."""
        async with self.session() as session:
            resp = await self._post(session, {**payload, "stream": True}, headers)
            finished = False
            tail: list[Chunk] = []
            try:
                buffer = b""
                content = resp.content
                while True:
                    try:
                        data = await content.readany()
                    except TimeoutError:
                        raise UpstreamTimeout("model server stream timed out") from None
                    except aiohttp.ClientError as exc:
                        raise UpstreamError(f"model server stream broke: {exc}") from None
                    if not data:
                        break
                    buffer += data
                    if b"\n" not in data:
                        continue
                    lines = buffer.split(b"\n")
                    buffer = lines.pop()
                    batch: list[Chunk] = []
                    failure: UpstreamError | None = None
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # blank separators, comments, event/id fields
                        body = line[5:].strip()
                        if body == _DONE:
                            finished = True
                            break
                        try:
                            chunk = orjson.loads(body)
                        except orjson.JSONDecodeError:
                            failure = UpstreamError("model server sent a malformed stream chunk")
                            break
                        if "error" in chunk or chunk.get("object") == "error":
                            message = _message_of(chunk, body)
                            failure = UpstreamError(f"model server failed mid-stream: {message}")
                            break
                        batch.append(chunk)
                    if batch:
                        tail = batch
                        yield batch  # what arrived before a failure is still relayed
                    if failure is not None:
                        raise failure
                    if finished:
                        # Read the body's end too, so the connection goes back to the pool
                        # for the next request instead of being closed.
                        try:
                            while await content.readany():
                                pass
                        except (aiohttp.ClientError, TimeoutError):
                            finished = False  # the answer is whole; just drop the connection
                        return
                if any(c.get("choices") and c["choices"][0].get("finish_reason") for c in tail):
                    finished = True  # some servers end without [DONE]; the answer is complete
                    return
                raise UpstreamError("model server closed the stream before the answer ended")
            finally:
                if finished:
                    resp.release()
                else:
                    resp.close()  # drop the connection: the model server stops generating

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
        """A small request/response exchange, with the same error mapping as chat calls."""
        try:
            async with (
                self.session() as session,
                session.request(
                    method,
                    f"{self.base_url}{path}",
                    data=data,
                    headers=await self._headers(session),
                    timeout=aiohttp.ClientTimeout(total=limit_s),
                ) as resp,
            ):
                raw = await resp.read()
                if resp.status >= 400:
                    raise _status_error(resp.status, raw, None)
        except TimeoutError:
            raise UpstreamTimeout(f"model server did not answer {path} in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"model server unreachable: {exc}") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"model server sent non-JSON from {path}") from None


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
    return upstream_status_error(status, message, retry_after)
