"""Response bytes written from the model server connection's callback (push mode).

A token relayed through the request's task costs a wake-up: a future set, the task resumed
through every ``await`` between it and the socket, an ASGI ``send``. Under uvicorn's
httptools server (what ``llm-service serve`` runs) the route can instead hand the response's
transport to the upstream connection, which writes each token's frame as it parses it
(``UpstreamClient.stream_chat``'s push mode): the task sleeps until the answer ends.

``DirectWriter`` writes the body exactly as uvicorn's ``send`` does for a chunked response
(``<size in hex>\\r\\n<bytes>\\r\\n``) and says when to stop: the client's socket buffer is full
(uvicorn paused writing) or the client went away. The route then pulls frames through
``send`` again, which waits for the client like any ASGI response. Under any other server
``direct_writer`` returns None and every frame goes through ``send``.
"""

from __future__ import annotations

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class DirectWriter:
    """Chunked body writes to one uvicorn response's transport (a ``FrameSink``)."""

    __slots__ = ("_cycle", "_flow", "_write")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._flow = cycle.flow
        self._write = cycle.transport.write

    @property
    def ready(self) -> bool:
        """The client is there and its socket buffer has room."""
        return not (self._cycle.disconnected or self._flow.write_paused)

    def __call__(self, body: bytes) -> bool:
        """Write ``body`` (not empty) as one HTTP chunk; True: stop, go back to ``send``."""
        cycle = self._cycle
        if cycle.disconnected:
            return True
        if not body:
            return False  # an empty chunk would end the response
        self._write(b"%x\r\n%b\r\n" % (len(body), body))
        return self._flow.write_paused


def direct_writer(send: Send) -> DirectWriter | None:
    """A ``DirectWriter`` for the response ``send`` belongs to, if that is uvicorn's
    httptools server with a chunked response under way (its head sent); else None."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return None
    try:
        if cycle.response_complete or cycle.chunked_encoding is not True:
            return None
        return DirectWriter(cycle)
    except AttributeError:  # another uvicorn inside: no push (tests/test_push.py notices)
        return None
