"""Hostile model servers on raw sockets, for the outbound-limit and redaction tests.

``HostileServer`` answers each request with exact bytes on cue: endless bodies, endless
heads, a line that never ends, redirects, garbage, an echo of the credentials it got. It
answers ``GET /v1/models`` like a model server unless told otherwise, and records every
request. ``Rss`` measures this process's resident memory (the service under test runs in
it, in a thread) before, at its peak during, and after a request.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from tests.support.servers import LoopThread

ENDLESS = 256 * 1024 * 1024  # what an "endless" answer sends at most, if nobody stops it
PIECE = 64 * 1024
MIB = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Sent:
    """What the server wrote for the last answer."""

    bytes: int = 0
    stopped_by_client: bool = False


Answer = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter, Sent], Awaitable[None]]


@dataclass
class HostileServer:
    """A model server on 127.0.0.1 that answers with the queued ``Answer``s (then
    ``default``), one request per connection."""

    default: Answer | None = None
    models: Answer | None = None  # how GET /v1/models is answered (None: normally)
    requests: list[Request] = field(default_factory=list)
    sent: Sent = field(default_factory=Sent)

    def __post_init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self._loop = LoopThread("hostile")
        self._server = self._loop.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def push(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        self._loop.run(stop())
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader)
            self.requests.append(request)
            answer: Answer | None
            if request.path == "/v1/models":
                answer = self.models or json_answer(MODELS)
            else:
                answer = self.answers.popleft() if self.answers else self.default
                assert answer is not None, "no answer queued"
                self.sent = Sent()
            await answer(request, reader, writer, self.sent)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


MODELS = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (status, content_type.encode(), len(body))
    ) + body


def json_answer(obj: object, status: int = 200) -> Answer:
    async def answer(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: Sent
    ) -> None:
        writer.write(response(status, orjson.dumps(obj)))
        await writer.drain()

    return answer


def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {"object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + orjson.dumps(body) + b"\n\n"


def normal_answer() -> Answer:
    """What a model server answers: a whole answer or a stream, as asked."""

    async def answer(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: Sent
    ) -> None:
        if orjson.loads(request.body).get("stream"):
            body = chunk({"content": "Hi"}) + chunk({}, "stop") + b"data: [DONE]\n\n"
            writer.write(response(200, body, "text/event-stream"))
        else:
            message = {"role": "assistant", "content": "Hi"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            writer.write(response(200, orjson.dumps({"object": "chat.completion",
                                                     "choices": [choice]})))  # fmt: skip
        await writer.drain()

    return answer


def endless(head: bytes, piece: bytes = b"x" * PIECE, limit: int = ENDLESS) -> Answer:
    """``head``, then ``piece`` over and over until the client goes away (or ``limit``)."""

    async def answer(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: Sent
    ) -> None:
        writer.write(head)
        try:
            while sent.bytes < limit:
                writer.write(piece)
                sent.bytes += len(piece)
                await writer.drain()
        except ConnectionError:
            sent.stopped_by_client = True

    return answer


def raw(data: bytes, *, hold: bool = False) -> Answer:
    """``data`` as is; with ``hold`` the connection stays open until the client closes it.
    Written piece by piece, so that the server's send buffer does not hold a copy of it."""

    async def answer(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: Sent
    ) -> None:
        view = memoryview(data)
        for start in range(0, len(data), PIECE):
            writer.write(view[start : start + PIECE])
            sent.bytes += len(view[start : start + PIECE])
            await writer.drain()
        if hold:
            await reader.read()

    return answer


def echo_credentials(status: int, template: str) -> Answer:
    """An error whose message repeats the Authorization header it got
    (``template.format(auth=..., token=...)``), as some servers and gateways do."""

    async def answer(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: Sent
    ) -> None:
        auth = request.headers.get("authorization", "")
        message = template.format(auth=auth, token=auth.removeprefix("Bearer "))
        writer.write(response(status, orjson.dumps({"error": {"message": message}})))
        await writer.drain()

    return answer


# --- memory -----------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class Rss:
    """Resident memory before the block, its peak during it (sampled every few ms) and,
    with ``settle``, after it once garbage is collected."""

    def __init__(self) -> None:
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss", daemon=True)

    def __enter__(self) -> Rss:
        gc.collect()
        self.before = self.peak = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def settle(self) -> int:
        """RSS once the service has let go of the request (and garbage is collected)."""
        time.sleep(0.3)
        gc.collect()
        self.after = rss()
        return self.after

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __str__(self) -> str:
        text = f"RSS before {self.before / MIB:.1f} MiB, peak +{self.growth / MIB:.1f} MiB"
        if self.after:
            text += f", after {(self.after - self.before) / MIB:+.1f} MiB"
        return text
