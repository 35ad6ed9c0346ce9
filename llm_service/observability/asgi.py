"""Request ids, metrics and access lines for the routes other than the chat hot path."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_service.observability.record import Observability


class ObservedRoutes:
    """ASGI wrapper: every HTTP request except ``skip`` (the chat route, which records
    itself) gets a request id header, a count by route and status, and an access line.

    The route label is the path template of the route that served the request (as the
    router recorded it in the scope); requests no route matched count as ``other``, so a
    scanner probing random URLs cannot grow the metrics.
    """

    def __init__(self, app: ASGIApp, obs: Observability, skip: str) -> None:
        self.app = app
        self.obs = obs
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == self.skip:
            await self.app(scope, receive, send)
            return
        record = self.obs.begin(scope, "other")

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
            path = getattr(scope.get("route"), "path", None)
            if isinstance(path, str) and record.status != 404:
                record.route = path
            self.obs.end(record)
