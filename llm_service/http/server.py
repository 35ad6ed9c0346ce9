"""How the service runs under uvicorn: its configuration and a protocol with inbound limits.

uvicorn's httptools protocol takes a request head of any size, any number of headers and
any time to send them or the body: one connection sending a header that never ends grows
the process without bound, and a few slow ones hold every concurrency slot. uvicorn offers
limits only for its h11 protocol (``h11_max_incomplete_event_size``) and a keep-alive timeout
between requests. ``GuardedHttpToolsProtocol`` adds what is missing, at the cost of a length
check per network read and two timers per request:

- the request line's target (414), the head's size and its number of header lines (431);
- the time a client may take to send a head, from connecting or from its first byte, and
  to send the whole body once the head has arrived (408, then the connection is closed).

A refused request never reaches the app. A body that stops coming is cut by closing the
connection: the app's ``receive`` then says ``http.disconnect`` and the request ends as a
client that left (499), giving back whatever it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llm_service.errors import ServiceError
from llm_service.settings import Settings

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class InboundLimits:
    """What one request's head and body may take (``LLM_MAX_HEADER_BYTES`` and friends)."""

    max_header_bytes: int
    max_headers: int
    max_request_line: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def of(cls, settings: Settings) -> InboundLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_request_line=settings.max_request_line,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
        )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``InboundLimits`` (see the module docstring).
    ``guarded_protocol`` makes a subclass bound to one set of limits."""

    limits: ClassVar[InboundLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Reading a head: from the connection's start or the end of the last request's body
        # until the next head is complete.
        self._in_head = True
        self._head_bytes = 0  # bytes received while reading a head, whole reads
        self._head_size = 0  # the head's exact size, from the parser's callbacks
        self._header_count = 0
        self._refusal: ServiceError | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: the connection is closing, nothing more is parsed
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._refusal is None
            and self._in_head
            and self._head_bytes > self.limits.max_header_bytes
        ):
            self._refuse(_too_large("request head", self.limits.max_header_bytes))
        if self._refusal is not None:
            self._send_refusal()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = self._header_count = 0
        if self._head_timer is None:  # a kept-alive connection's next request: its first byte
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if self._refusal is not None:
            return
        super().on_url(url)
        self._head_size += len(url)
        if len(self.url) > self.limits.max_request_line:
            self._refuse(
                ServiceError(
                    f"request target exceeds {self.limits.max_request_line} bytes "
                    "(LLM_MAX_REQUEST_LINE)",
                    status=414,
                    type="invalid_request_error",
                    param="url",
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        super().on_header(name, value)
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            self._refuse(
                ServiceError(
                    f"more than {self.limits.max_headers} header lines (LLM_MAX_HEADERS)",
                    status=431,
                    type="invalid_request_error",
                    param="headers",
                )
            )
        elif self._head_size > self.limits.max_header_bytes:
            self._refuse(_too_large("request head", self.limits.max_header_bytes))

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return  # never reaches the app
        self._in_head = False
        self._head_bytes = 0
        self._cancel(head=True)
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_expired)

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is None:
            self._cancel(head=False)
            self._in_head = True  # what follows is the next request's head
            super().on_message_complete()

    # --- limits ----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel(head=True)
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refusal is not None or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # a connection that never said anything gets no answer
            return
        self._refuse(_timeout("request head", self.limits.header_timeout, "HEADER"))
        self._send_refusal()

    def _body_expired(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if not cycle.response_started:
            self._write_error(_timeout("request body", self.limits.body_timeout, "BODY"))
        self.transport.close()  # the app's receive() now says http.disconnect

    def _refuse(self, error: ServiceError) -> None:
        if self._refusal is None:
            self._refusal = error

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        self._cancel_timers()
        if not self.transport.is_closing():
            self._write_error(self._refusal)
            self.transport.close()

    def _write_error(self, error: ServiceError) -> None:
        body = orjson.dumps(error.body())
        head = b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b"Error"))
        self.transport.write(
            head
            + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
            + body
        )

    def _cancel(self, *, head: bool) -> None:
        timer = self._head_timer if head else self._body_timer
        if timer is not None:
            timer.cancel()
        if head:
            self._head_timer = None
        else:
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel(head=True)
        self._cancel(head=False)


def _too_large(what: str, limit: int) -> ServiceError:
    return ServiceError(
        f"{what} exceeds {limit} bytes (LLM_MAX_HEADER_BYTES)",
        status=431,
        type="invalid_request_error",
        param="headers",
    )


def _timeout(what: str, seconds: float, setting: str) -> ServiceError:
    return ServiceError(
        f"{what} not received within {seconds:g} s (LLM_{setting}_TIMEOUT)",
        status=408,
        type="invalid_request_error",
        param="body" if setting == "BODY" else "headers",
    )


def guarded_protocol(limits: InboundLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` option, bound to ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the service: uvloop, the guarded httptools protocol, no
    access log of uvicorn's own (the service writes its own lines, with request ids).
    ``options`` override (host, port, log level, ...)."""
    values: dict[str, Any] = {
        "host": settings.usvc_host,
        "port": settings.usvc_port,
        "loop": "uvloop",
        "http": guarded_protocol(InboundLimits.of(settings)),
        "log_level": settings.log_level.lower(),
        "log_config": None,  # keep the handler configure_logging set up
        "access_log": False,
        "proxy_headers": False,  # one middleware less per request; we log no client addresses
        "lifespan": "on",
        # SIGTERM: stop accepting, let requests finish, then cut them (an SSE error event).
        "timeout_graceful_shutdown": settings.drain_timeout,
    }
    values.update(options)
    return uvicorn.Config(app, **values)


class Server(uvicorn.Server):
    """uvicorn's server, calling ``on_exit`` once it has stopped serving and before it
    re-raises a SIGTERM or SIGINT it caught (which ends the process at once): the log
    writer's last lines are written by then."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self.on_exit()
