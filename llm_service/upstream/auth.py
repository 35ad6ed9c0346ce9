"""Credentials for the model server: a static API key or OAuth2 client credentials.

The static key (``LLM_VLLM_API_KEY``) overrides OAuth, as in the service we replace. OAuth
tokens are fetched on first use and fetched again shortly before they expire.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from llm_service.errors import UpstreamUnavailable

REFRESH_MARGIN_S = 30.0


class Auth:
    """No credentials."""

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return {}

    async def aclose(self) -> None:
        return None


class StaticKeyAuth(Auth):
    def __init__(self, api_key: str) -> None:
        self._headers = {"Authorization": f"Bearer {api_key}"}

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return self._headers

    def __repr__(self) -> str:
        return "StaticKeyAuth(api_key='**********')"


class OAuthClientCredentials(Auth):
    """OAuth2 client-credentials grant, cached until ``REFRESH_MARGIN_S`` before expiry."""

    def __init__(self, token_url: str, client_id: str, client_secret: str) -> None:
        self.token_url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OAuthClientCredentials(token_url={self.token_url!r}, client_secret='**********')"

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._expires_at:
            async with self._lock:
                if self._token is None or time.monotonic() >= self._expires_at:
                    await self._fetch(session)
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(
                self.token_url, data=self._form, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise UpstreamUnavailable(f"token endpoint answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from None
        try:
            data = orjson.loads(body)
            self._token = str(data["access_token"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamUnavailable("token endpoint sent no access_token") from None
        expires_in = float(data.get("expires_in") or 300)
        self._expires_at = time.monotonic() + max(expires_in - REFRESH_MARGIN_S, expires_in / 2)
