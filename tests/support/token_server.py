"""A small real OAuth2 token endpoint for the tests (client-credentials grant).

It issues numbered tokens that expire after ``expires_in`` seconds, checks the client's
id and secret, can be switched to answer 503 (``down``), and tells a model server which
tokens are currently valid (``valid``), so a fake model server can answer 401 like a real
one behind an auth gateway.
"""

from __future__ import annotations

import threading
import time

from aiohttp import web


class TokenServer:
    def __init__(
        self, client_id: str = "svc", client_secret: str = "s3cr3t", expires_in: float = 300
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.down = False
        self.issued: list[str] = []
        self.rejected = 0
        self._valid: dict[str, float] = {}  # token -> expiry (monotonic)
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        return app

    async def token(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        form = await request.post()
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            self.rejected += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        with self._lock:
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append(token)
            self._valid[token] = time.monotonic() + self.expires_in
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    def valid(self, token: str) -> bool:
        with self._lock:
            return self._valid.get(token, 0.0) > time.monotonic()

    def revoke_all(self) -> None:
        with self._lock:
            self._valid.clear()
