"""Request ids, metrics and access lines for the routes other than the chat hot path."""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_service.observability.record import Observability


class ObservedRoutes:
    """ASGI wrapper: every HTTP request except ``skip`` (the chat route, which records
    itself) gets a request id header, a count by route and status, and an access line.

    Route labels are the app's declared paths; any other path counts as ``other``, so a
    scanner probing random URLs cannot grow the metrics.
    """

    def __init__(
        self, app: ASGIApp, obs: Observability, routes: Collection[str], skip: str
    ) -> None:
        self.app = app
        self.obs = obs
        self.routes = frozenset(routes)
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == self.skip:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        record = self.obs.begin(scope, path if path in self.routes else "other")

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), *record.headers]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            record.status = 500
            raise
        finally:
            self.obs.end(record)
