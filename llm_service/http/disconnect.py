"""Noticing that the client went away, so that nothing is generated for nobody."""

from __future__ import annotations

import asyncio

from starlette.types import Receive


class ClientWatch:
    """Cancels the request's task the moment the client goes away.

    uvicorn does not fail a ``send`` to a closed connection (it drops the bytes), so
    without this a stream would run to its end for nobody. One task per request waits on
    ``receive()`` for ``http.disconnect``; nothing is added per chunk. ``finish()`` must be
    called right after the response's last send (before any other await), since ``receive``
    also says ``http.disconnect`` once the response is complete.
    """

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._active = True
        self._request = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server whose receive fails after the response: nothing to do
            return
        if self._active and self._request is not None:
            self.gone = True
            self._request.cancel()

    def finish(self) -> None:
        """The response is complete (or abandoned): stop watching. The references to both
        tasks are dropped, so that the cancelled watcher (its CancelledError holds its frame,
        which holds this object) forms no reference cycle: per request, nothing is left for
        the cyclic garbage collector, whose pauses delay every stream (docs/performance.md)."""
        self._active = False
        watcher, self._watcher = self._watcher, None
        self._request = None
        if watcher is not None:
            watcher.cancel()
