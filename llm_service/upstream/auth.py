"""Credentials for the model server: a static API key or OAuth2 client credentials.

The static key (``LLM_VLLM_API_KEY``) overrides OAuth, as in the service we replace. The
OAuth token is fetched when the app starts and refreshed in the background before it
expires (``expires_in``); a 401 from the model server refreshes it once more and the request
is sent once more. A token endpoint that is down makes requests fail with 503 and a clear
message while the refresher keeps trying with backoff: never a crash loop. Neither the
secret nor a token is ever logged, put in an error body or shown by ``repr``: each is
registered with the client's ``Redactor`` (``bind``), which scrubs them from whatever a
server echoes, and the token URL is shown without userinfo or query (``safe_url``).

Credentials in the model server's URL (``http://user:pass@host``) become an
``Authorization: Basic`` header on every request (``url_credentials``) unless the static key
or OAuth gives one: the explicit setting wins. The token endpoint is reached through the
same proxy as the model server would be (``Proxies``, given by the client in ``bind``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson

from llm_service.errors import UpstreamUnavailable
from llm_service.upstream.bounded import TooLarge, read_capped
from llm_service.upstream.proxy import Proxies
from llm_service.upstream.redact import Redactor, safe_url, secrets_of_url

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 30.0
FAILURE_HOLD_S = 1.0  # a failed fetch is not repeated for this long (requests get its 503)
RETRY_MAX_S = 30.0
TOKEN_REPLY_BYTES = 64 * 1024  # a token reply is a few hundred bytes (a JWT a few KiB)


@lru_cache(maxsize=256)
def url_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its userinfo, and the ``Authorization`` value (``Basic ...``) that
    the userinfo makes (None without one)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    netloc = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class Auth:
    """No credentials."""

    redactor: Redactor | None = None
    proxies: Proxies = Proxies()

    def bind(self, redactor: Redactor, proxies: Proxies | None = None) -> None:
        """Register this auth's secrets (and, from now on, each token fetched) with
        ``redactor``, the one that scrubs the model server's messages; ``proxies`` are the
        client's, for the token endpoint."""
        self.redactor = redactor
        if proxies is not None:
            self.proxies = proxies
        for secret in self.secrets():
            redactor.add(secret)

    def secrets(self) -> list[str]:
        """What must never be shown: keys, client secrets, credentials in URLs."""
        return []

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return {}

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Begin background work (the app's lifespan calls it with the shared session)."""
        return None

    async def refresh(self, session: aiohttp.ClientSession, used: Mapping[str, str]) -> bool:
        """The model server answered 401 to ``used`` headers: renew them if possible.
        True means a retry may succeed."""
        return False

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class StaticKeyAuth(Auth):
    def __init__(self, api_key: str) -> None:
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def secrets(self) -> list[str]:
        return [self._headers["Authorization"].removeprefix("Bearer ")]

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return self._headers

    def __repr__(self) -> str:
        return "StaticKeyAuth(api_key='**********')"


class OAuthClientCredentials(Auth):
    """OAuth2 client-credentials grant, refreshed ``REFRESH_MARGIN_S`` before expiry (or at
    half its lifetime for short-lived tokens)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str) -> None:
        self.token_url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._headers: dict[str, str] | None = None
        self._expires_at = 0.0
        self._failed: tuple[float, str] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0  # tokens fetched so far (for logs and tests)

    def __repr__(self) -> str:
        url = safe_url(self.token_url)
        return f"OAuthClientCredentials(token_url={url!r}, client_secret='**********')"

    def secrets(self) -> list[str]:
        return [self._form["client_secret"], *secrets_of_url(self.token_url)]

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        headers = self._headers
        if headers is None or time.monotonic() >= self._expires_at:
            async with self._lock:
                if self._headers is None or time.monotonic() >= self._expires_at:
                    await self._fetch(session, hold=True)
                headers = self._headers
        assert headers is not None
        return headers

    async def refresh(self, session: aiohttp.ClientSession, used: Mapping[str, str]) -> bool:
        async with self._lock:
            if self._headers is None or self._headers.get("Authorization") == used.get(
                "Authorization"
            ):
                log.info("model server rejected the OAuth token (401); fetching a new one")
                await self._fetch(session, hold=False)
        return True

    async def start(self, session: aiohttp.ClientSession) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep_fresh(session), name="oauth-refresh")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_fresh(self, session: aiohttp.ClientSession) -> None:
        """Fetch now, then again before each expiry; on failure retry with backoff."""
        backoff = 1.0
        while True:
            wait = self._expires_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                async with self._lock:
                    if self._expires_at - time.monotonic() <= 0:
                        await self._fetch(session, hold=False)
                backoff = 1.0
            except UpstreamUnavailable as exc:
                log.warning("OAuth token refresh failed (%s); retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)

    async def _fetch(self, session: aiohttp.ClientSession, *, hold: bool) -> None:
        """Get a new token (the caller holds the lock). With ``hold``, a failure of less
        than ``FAILURE_HOLD_S`` ago is raised again instead of asking the endpoint."""
        failed = self._failed
        if hold and failed is not None and time.monotonic() - failed[0] < FAILURE_HOLD_S:
            raise UpstreamUnavailable(failed[1])
        try:
            await self._fetch_once(session)
        except UpstreamUnavailable as exc:
            self._failed = (time.monotonic(), exc.message)
            raise
        self._failed = None

    async def _fetch_once(self, session: aiohttp.ClientSession) -> None:
        url = safe_url(self.token_url)
        try:
            async with session.post(
                self.token_url,
                data=self._form,
                timeout=aiohttp.ClientTimeout(total=10),
                allow_redirects=False,  # the client secret goes to this URL and no other
                **self.proxies.aiohttp_kwargs(self.token_url),
            ) as resp:
                if resp.status != 200:
                    resp.close()  # its body is never read
                    raise UpstreamUnavailable(f"OAuth token endpoint {url} answered {resp.status}")
                body = await read_capped(resp, TOKEN_REPLY_BYTES)
        except TooLarge:
            raise UpstreamUnavailable(
                f"OAuth token endpoint {url} sent more than {TOKEN_REPLY_BYTES} bytes"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"OAuth token endpoint {url} unreachable: {type(exc).__name__}"
            ) from None
        try:
            data = orjson.loads(body)
            token = str(data["access_token"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamUnavailable(f"OAuth token endpoint {url} sent no access_token") from None
        if self.redactor is not None:
            self.redactor.add(token, token=True)
        try:
            expires_in = float(data.get("expires_in") or 300)
        except (TypeError, ValueError):
            expires_in = 300.0
        self._headers = {"Authorization": f"Bearer {token}"}
        self._expires_at = time.monotonic() + max(expires_in - REFRESH_MARGIN_S, expires_in / 2)
        self.fetches += 1
        log.info("OAuth token fetched; valid for %.0f s", expires_in)
