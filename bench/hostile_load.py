"""Hostile clients and a hostile model server in bulk: the heavy variants of the suite's
inbound-limit, template, outbound-limit and redaction tests.

``make loadtest`` runs it after ``bench.loadtest``. The service runs as a child process
(``bench.harness``, pinned to its own core when there are two) with short timeouts
(``LLM_HEADER_TIMEOUT=2``, ``LLM_BODY_TIMEOUT=2``), first in front of the fake upstream
(``LLM_MAX_CONCURRENT=4``), then in front of the hostile model server of this module (no
cap: a hundred concurrent hostile replies must each reach their limit, not a 429; a
configured ``LLM_VLLM_API_KEY`` that the server echoes). Cases, each bounded in count and
time (every loop ends by itself; everything on 127.0.0.1):

- ``flood``: connections each sending a 25 MB header that never ends, in 64 KiB writes;
- ``slow``: slow clients for 10 s (slowloris: a header byte a second; slow bodies: the head,
  then a body byte a second), each reconnecting when the service cuts it, while one
  normal client sends chat requests one after another: every one of those must be 200;
- ``spec`` / ``repeat``: per-request templates with a huge width spec / 1 MB of template
  repeating ``{question}``: every one 422, fast;
- ``endless-body`` / ``endless-header`` / ``endless-line``: concurrent requests whose model
  server answers with a body, a header or an SSE line that never ends: every one 502 within
  a few seconds;
- ``echo``: a 16 MB error message from the model server that starts by echoing the
  Authorization header: 502 bodies under 2 KB without the key, and no key in the service log.

For each: the service's RSS before, at its peak (``/proc/<pid>/statm`` every 50 ms) and 2 s
after; the time taken; the status counts; the slowest ``/v1/health_check`` (polled every
200 ms on a fresh connection, as an orchestrator's probe). A case fails (and the exit status
is 1) when its statuses are not the expected ones, the peak passes baseline + 300 MB, the
after value baseline + 50 MB, or a health check takes over 1 s. Prints a Markdown table on
stderr and one JSON object on stdout::

    python -m bench.hostile_load [--only flood,echo] [--flood 200 --slow 200 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import aiohttp
import orjson
import uvloop

from bench.harness import ROOT, BenchError, Child, Harness, Machine, free_port
from bench.procstat import raise_nofile_limit
from llm_service.settings import Settings

MIB = 1024 * 1024
PIECE = 64 * 1024  # one write of every flood, as a client or server writing fast would
PAGE = os.sysconf("SC_PAGE_SIZE")
CHAT = "/v1/chat/completions"

# --- the hostile model server -----------------------------------------------------------------
# Run as a child process (``--upstream-port``) on the load core. It answers like a model
# server unless the request's body carries one of the markers below; one request per
# connection, always ``Connection: close``.

ENDLESS_BODY = "hostile:endless-body"
DEFAULT_RESPONSE_CAP = Settings.model_fields["max_upstream_response_bytes"].default
ENDLESS_HEADER = "hostile:endless-header"
ENDLESS_LINE = "hostile:endless-line"
ECHO = "hostile:echo-error"
ENDLESS_LIMIT = 256 * MIB  # what an "endless" answer sends at most if nobody stops it
ANSWER_SECONDS = 60.0  # and for at most this long
ECHO_BYTES = 16 * MIB


def _head(status: int, content_type: bytes, length: int | None = None) -> bytes:
    size = b"" if length is None else b"Content-Length: %d\r\n" % length
    return b"HTTP/1.1 %d X\r\nContent-Type: %s\r\n%sConnection: close\r\n\r\n" % (
        status,
        content_type,
        size,
    )


def _json_reply(obj: object, status: int = 200) -> bytes:
    body = orjson.dumps(obj)
    return _head(status, b"application/json", len(body)) + body


def _normal(body: bytes) -> bytes:
    """A model server's answer: the whole answer or a two-chunk stream, as asked."""
    try:
        stream = bool(orjson.loads(body).get("stream")) if body else False
    except orjson.JSONDecodeError:
        stream = False
    if not stream:
        message = {"role": "assistant", "content": "Hi"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return _json_reply(
            {"object": "chat.completion", "model": "fake-model", "choices": [choice]}
        )
    frames = b""
    for delta, finish in (({"content": "Hi"}, None), ({}, "stop")):
        chunk = {
            "object": "chat.completion.chunk",
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        frames += b"data: " + orjson.dumps(chunk) + b"\n\n"
    frames += b"data: [DONE]\n\n"
    return _head(200, b"text/event-stream", len(frames)) + frames


async def _pour(writer: asyncio.StreamWriter, start: bytes, piece: bytes, limit: int) -> None:
    """``start``, then ``piece`` over and over until the client goes away (or ``limit``)."""
    writer.write(start)
    sent = 0
    while sent < limit:
        writer.write(piece)
        sent += len(piece)
        await writer.drain()  # waits while the service does not read: no buffer grows here


@functools.cache
def _padding() -> bytes:
    return b"x" * ECHO_BYTES


async def _echo(writer: asyncio.StreamWriter, authorization: str) -> None:
    """401 with a 16 MB ``error.message`` that starts with the credentials it got, as some
    servers and gateways do; written in pieces of one shared padding (no copy per request)."""
    token = authorization.removeprefix("Bearer ")
    prefix = orjson.dumps(
        f"Incorrect API key provided: {authorization}. The key {token} "
        "is not valid for this model. "
    )[:-1]
    start, end = b'{"error": {"message": ' + prefix, b'", "code": 401}}'
    writer.write(_head(401, b"application/json", len(start) + ECHO_BYTES + len(end)) + start)
    padding = memoryview(_padding())
    for offset in range(0, ECHO_BYTES, PIECE):
        writer.write(padding[offset : offset + PIECE])
        await writer.drain()
    writer.write(end)
    await writer.drain()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(ANSWER_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if " " in lines[0] else "/"
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if path == "/health":
                writer.write(_json_reply({"status": "ok"}))
            elif path == "/v1/models":
                writer.write(
                    _json_reply(
                        {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
                    )
                )
            elif ENDLESS_BODY.encode() in body:
                start = _head(200, b"application/json") + b'{"choices": [{"message": {"content": "'
                await _pour(writer, start, b"x" * PIECE, ENDLESS_LIMIT)
            elif ENDLESS_HEADER.encode() in body:
                await _pour(writer, b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * PIECE, ENDLESS_LIMIT)
            elif ENDLESS_LINE.encode() in body:
                start = (
                    _head(200, b"text/event-stream") + b'data: {"choices": [{"delta": {"content": "'
                )
                await _pour(writer, start, b"z" * PIECE, ENDLESS_LIMIT)
            elif ECHO.encode() in body:
                await _echo(writer, headers.get("authorization", ""))
            else:
                writer.write(_normal(body))
            await writer.drain()
    except (
        ConnectionError,
        TimeoutError,
        ValueError,
        IndexError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ):
        pass  # the service went away (it should, past its limits), or sent nonsense
    finally:
        writer.close()


async def serve_upstream(port: int, lifetime: float) -> None:
    """The hostile model server on 127.0.0.1:``port``, for ``lifetime`` seconds at most."""
    server = await asyncio.start_server(_answer, "127.0.0.1", port, backlog=1024)
    async with server:
        await asyncio.sleep(lifetime)


# --- measuring the service while a case runs --------------------------------------------------


def rss_of(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (``statm``: one short read); 0.0 when gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE / MIB
    except (OSError, IndexError, ValueError):
        return 0.0


class Watch:
    """The service's RSS every 50 ms and its health probe every 200 ms while a case runs.

    Each in a thread of its own, not a task on the load generator's event loop: that loop is
    busy for long stretches (200 floods writing), and a sample that waited for it would miss
    a short peak or count the loop's delay as the service's latency.
    """

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.before = self.peak = rss_of(pid)
        self.latencies: list[float] = []
        self.health_failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sample_rss, name="rss", daemon=True),
            threading.Thread(target=self._poll_health, name="health", daemon=True),
        ]

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _sample_rss(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_of(self.pid))

    def _poll_health(self) -> None:
        while True:
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
            try:
                conn.request("GET", "/v1/health_check")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.health_failures[str(resp.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                self.health_failures[type(exc).__name__] += 1
            finally:
                conn.close()
            took = time.monotonic() - started
            self.latencies.append(took)
            if self._stop.wait(max(0.0, 0.2 - took)):
                return


@dataclass
class Result:
    """One case: what it sent, what came back, and what it cost the service."""

    name: str
    load: str
    statuses: dict[str, int]
    seconds: float
    rss_mb: dict[str, float]  # before, peak, after (2 s after the end)
    health_max_ms: float
    health_polls: int
    health_failures: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Limits:
    peak_mb: float
    after_mb: float
    health_ms: float


@dataclass
class Outcome:
    """What a case's load returns: status counts, figures to report, its own failures."""

    statuses: Counter[str]
    detail: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


async def measure(
    name: str, load: str, service: Child, port: int, limits: Limits, run: Awaitable[Outcome]
) -> Result:
    """Run one case under a ``Watch``; RSS 2 s after its end; check the common limits."""
    await asyncio.sleep(0.5)  # the previous case's connections are closed by now
    print(f"{name}: {load} ...", file=sys.stderr)
    with Watch(service.pid, port) as watch:
        started = time.monotonic()
        outcome = await run
        took = time.monotonic() - started
    await asyncio.sleep(2.0)
    after = rss_of(service.pid)
    rss = {"before": round(watch.before, 1), "peak": round(watch.peak, 1), "after": round(after, 1)}
    health_max = max(watch.latencies, default=0.0) * 1000
    failures = list(outcome.failures)
    if not service.alive():
        failures.append("the service died")
    if watch.peak - watch.before > limits.peak_mb:
        failures.append(f"RSS peak {watch.peak - watch.before:+.0f} MB > {limits.peak_mb:.0f}")
    if after - watch.before > limits.after_mb:
        failures.append(f"RSS after {after - watch.before:+.0f} MB > {limits.after_mb:.0f}")
    if health_max > limits.health_ms or watch.health_failures:
        failures.append(
            f"health check {health_max:.0f} ms max, failed: {dict(watch.health_failures) or 'none'}"
        )
    return Result(
        name,
        load,
        dict(sorted(outcome.statuses.items())),
        round(took, 2),
        rss,
        round(health_max, 1),
        len(watch.latencies),
        dict(watch.health_failures),
        outcome.detail,
        failures,
    )


# --- raw-socket clients -------------------------------------------------------------------


class Raw(asyncio.Protocol):
    """A client connection that keeps what the service sent even when the connection then
    ends in a reset (a service closing with a flood unread resets it): a ``StreamReader``
    raises the reset instead of returning what it holds, and the refusal would be lost."""

    KEEP = 65536  # of the answer: its status line and message are at the start

    def __init__(self) -> None:
        self.data = bytearray()
        self.reset = False
        self.ended = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self._transport: asyncio.WriteTransport | None = None

    @classmethod
    async def connect(cls, port: int) -> Raw:
        _, raw = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        return raw

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        if len(self.data) < self.KEEP:
            self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.reset = exc is not None
        self._writable.set()
        if not self.ended.done():
            self.ended.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def send(self, data: bytes) -> bool:
        """Write ``data`` and wait while the service does not read; False once closed."""
        if self.ended.done() or self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(data)
        await self._writable.wait()
        # A set Event returns at once: yield, so that the loop reads what the service sent
        # (its answer, or the end of the connection) between our writes.
        await asyncio.sleep(0)
        return not self.ended.done()

    async def answer(self, seconds: float) -> str | None:
        """The status the service answered with (or reset / closed) once the connection
        ended, within ``seconds``; None if it is still open."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.ended), seconds)
        if not self.ended.done():
            return None
        data = bytes(self.data)
        if data.startswith(b"HTTP/1.") and data.count(b" ") >= 2:
            return data.split(b" ", 2)[1].decode("latin-1")
        return "reset" if self.reset else "closed"

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def flood_one(port: int, size: int, seconds: float) -> tuple[str, int]:
    """A GET whose one header never ends: 64 KiB writes until the service refuses it (or
    ``size`` bytes, or ``seconds``). Returns the status (431, or reset: the refusal lost in
    the reset) and the bytes handed to the kernel."""
    piece = b"a" * PIECE
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        raw = await asyncio.wait_for(Raw.connect(port), seconds)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__, sent
    try:
        async with asyncio.timeout(seconds):
            if await raw.send(b"GET /v1/health_check HTTP/1.1\r\nHost: x\r\nX-Big: "):
                while sent < size and await raw.send(piece):
                    sent += len(piece)
        status = await raw.answer(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        status = None
    finally:
        raw.close()
    return status or "timeout", sent


async def case_flood(port: int, connections: int, size: int) -> Outcome:
    results = await asyncio.gather(*(flood_one(port, size, 60.0) for _ in range(connections)))
    statuses = Counter(status for status, _ in results)
    sent = [n for _, n in results]
    outcome = Outcome(
        statuses,
        {
            "sent_mb_total": round(sum(sent) / MIB, 1),
            "sent_mb_max_per_connection": round(max(sent) / MIB, 2),
        },
    )
    unexpected = set(statuses) - {"431", "reset"}
    if unexpected:
        outcome.failures.append(f"unexpected outcomes {sorted(unexpected)}")
    if statuses["431"] == 0:
        outcome.failures.append("no connection got its 431")
    if max(sent) >= size:
        outcome.failures.append("a connection sent its whole header unrefused")
    return outcome


SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "


def body_head(path: bytes, length: int) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (path, length)
    )


async def slow_connection(port: int, start: bytes, byte: bytes, deadline: float) -> str:
    """``start``, then ``byte`` once a second until the service answers (or ``deadline``)."""
    raw = await Raw.connect(port)
    try:
        if await raw.send(start):
            while time.monotonic() < deadline:
                if await raw.answer(min(1.0, deadline - time.monotonic())) is not None:
                    break
                if not await raw.send(byte):
                    break
        # Closed while sending: the answer, or the reset, is a moment away. At the window's
        # end, a connection opened less than a timeout before is still open.
        return await raw.answer(1.0 if raw.ended.done() else 0) or "open at the end"
    finally:
        raw.close()


async def slow_client(
    port: int, kind: str, path: bytes, delay: float, deadline: float, tally: Counter[str]
) -> None:
    """One slow client for the whole window: when the service cuts it, it comes back."""
    await asyncio.sleep(delay)
    start, byte = (SLOW_HEAD, b"a") if kind == "head" else (body_head(path, 1000) + b"{", b" ")
    while time.monotonic() < deadline:
        try:
            status = await slow_connection(port, start, byte, deadline)
        except OSError as exc:
            status = type(exc).__name__
            await asyncio.sleep(0.1)
        tally[f"{kind}:{status}"] += 1


async def timed_post(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[str, float, bytes]:
    """Status (or the exception's name), seconds, and the body's first 64 KiB."""
    started = time.monotonic()
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            data = await resp.content.read(65536)
            status = str(resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        status, data = type(exc).__name__, b""
    return status, time.monotonic() - started, data


def ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds) or [0.0]
    return {"p50": round(ordered[len(ordered) // 2] * 1000, 1), "max": round(ordered[-1] * 1000, 1)}


async def case_slow(url: str, port: int, slow: int, hold: float, chats: int) -> Outcome:
    deadline = time.monotonic() + hold
    tally: Counter[str] = Counter()
    paths = (b"/v1/chat/completions", b"/llm/invoke")
    # Half slowloris, half slow bodies (to the chat route and to LangServe); started over a
    # second so that their timeouts do not all fall on the same tick.
    clients = [
        slow_client(
            port, "head" if i % 2 == 0 else "body", paths[(i // 2) % 2], i / slow, deadline, tally
        )
        for i in range(slow)
    ]
    body = orjson.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": False}
    )
    latencies: list[float] = []
    normal: Counter[str] = Counter()

    async def one_after_another() -> None:
        # Spread over the window (after the slow clients have arrived), so that every
        # second of it has requests that must find a free place.
        await asyncio.sleep(1.0)
        interval = (hold - 1.5) / chats
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for i in range(chats):
                await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
                status, took, _ = await timed_post(session, url + CHAT, body)
                normal[status] += 1
                latencies.append(took)

    await asyncio.gather(one_after_another(), *clients)
    statuses = Counter({f"chat:{k}": v for k, v in normal.items()}) + tally
    outcome = Outcome(statuses, {"chat_ms": ms(latencies), "slow_connections": sum(tally.values())})
    if normal["200"] != chats:
        outcome.failures.append(f"normal client: {dict(normal)}, expected {chats} x 200")
    cut = {k.split(":", 1)[1] for k in tally} - {"408", "open at the end"}
    if cut:
        outcome.failures.append(f"slow clients ended otherwise than 408: {sorted(cut)}")
    return outcome


async def posts(
    url: str, bodies: list[bytes], concurrency: int, quick: float, expected: str
) -> tuple[Outcome, list[bytes]]:
    """POST every body with ``concurrency`` workers; each must be ``expected`` in under
    ``quick`` seconds. Returns the outcome and the response bodies."""
    pending = iter(enumerate(bodies))
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    answers: list[bytes] = [b""] * len(bodies)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for i, body in pending:
                status, took, answers[i] = await timed_post(session, url, body)
                statuses[status] += 1
                latencies.append(took)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcome = Outcome(statuses, {"latency_ms": ms(latencies)})
    if statuses[expected] != len(bodies):
        outcome.failures.append(f"expected {len(bodies)} x {expected}, got {dict(statuses)}")
    if max(latencies, default=0.0) > quick:
        outcome.failures.append(f"slowest answer {max(latencies):.2f} s > {quick} s")
    return outcome, answers


def sample_message(answers: list[bytes]) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
        return str(orjson.loads(answers[0])["error"]["message"])[:160]
    return answers[0][:160].decode(errors="replace") if answers else ""


async def case_posts(
    url: str, bodies: list[bytes], concurrency: int, quick: float, expected: str
) -> Outcome:
    outcome, answers = await posts(url, bodies, concurrency, quick, expected)
    outcome.detail["message"] = sample_message(answers)
    return outcome


def chat_body(content: str, stream: bool) -> bytes:
    return orjson.dumps(
        {"messages": [{"role": "user", "content": content}], "max_tokens": 16, "stream": stream}
    )


async def case_echo(url: str, count: int, key: str, service: Child) -> Outcome:
    bodies = [chat_body(ECHO, stream=i % 2 == 1) for i in range(count)]
    outcome, answers = await posts(url, bodies, count, 5.0, "502")
    lowered = key.lower().encode()
    leaked = sum(lowered in a.lower() for a in answers)
    scrubbed = sum(b"***" in a for a in answers)  # the echo arrived, and was scrubbed
    longest = max((len(a) for a in answers), default=0)
    await asyncio.sleep(0.5)  # the service's last log lines are written
    text = service.log.read_bytes()
    in_log = text.lower().count(lowered)
    lines = text.splitlines()
    outcome.detail.update(
        {
            "longest_body_bytes": longest,
            "bodies_with_key": leaked,
            "bodies_scrubbed": scrubbed,
            "log_lines": len(lines),
            "log_lines_on_401": sum(b"401" in line for line in lines),
            "longest_log_line": max((len(line) for line in lines), default=0),
            "key_in_log": in_log,
            "message": sample_message(answers),
        }
    )
    if longest >= 2048:
        outcome.failures.append(f"a 502 body of {longest} bytes")
    if leaked or in_log:
        outcome.failures.append(f"the key is in {leaked} bodies and {in_log} times in the log")
    if scrubbed != count:
        outcome.failures.append(f"only {scrubbed} bodies show the scrubbed echo")
    return outcome


# --- the run ----------------------------------------------------------------------------------

CLIENT_CASES = ("flood", "slow", "spec", "repeat")  # in front of the fake upstream
UPSTREAM_CASES = ("endless-body", "endless-header", "endless-line", "echo")  # the hostile one
CASES = CLIENT_CASES + UPSTREAM_CASES
WIDE = "{question:>1000000000}"
REPEATED = "{question}" * 100_000  # 1 M characters: 100 M with a 1,000-character question
SHORT_TIMEOUTS = {"LLM_HEADER_TIMEOUT": "2", "LLM_BODY_TIMEOUT": "2"}


@dataclass
class Options:
    only: tuple[str, ...]
    flood: int
    head_mb: int
    slow: int
    hold: float
    chats: int
    templates: int
    endless: int
    echo: int
    limits: Limits
    service_env: dict[str, str]  # for both services, after this module's own settings


Case = tuple[str, str, Callable[[], Awaitable[Outcome]]]  # name, what it sends, the sending


def client_cases(o: Options, url: str) -> list[Case]:
    port, chat = port_of(url), url + CHAT
    wide = orjson.dumps({"question": "hi", "user_prompt_template": WIDE})
    repeated = orjson.dumps({"question": "q" * 1000, "user_prompt_template": REPEATED})
    # Templates 3 at a time: they are checked inside a place under the cap of 4, and a place
    # is given back just after the answer is sent, so a fourth worker could meet a 429.
    return [
        ("flood", f"{o.flood} connections x a {o.head_mb} MB header without end",
         lambda: case_flood(port, o.flood, o.head_mb * MIB)),
        ("slow", f"{o.slow} slow clients for {o.hold:.0f} s + {o.chats} chats in turn",
         lambda: case_slow(url, port, o.slow, o.hold, o.chats)),
        ("spec", f"{o.templates} x template {WIDE}",
         lambda: case_posts(chat, [wide] * o.templates, 3, 1.0, "422")),
        ("repeat", f"{o.templates} x 1 MB template repeating {{question}}",
         lambda: case_posts(chat, [repeated] * o.templates, 3, 1.0, "422")),
    ]  # fmt: skip


def upstream_cases(o: Options, url: str, key: str, service: Child) -> list[Case]:
    chat, n = url + CHAT, o.endless

    def endless(marker: str, stream: bool) -> Callable[[], Awaitable[Outcome]]:
        return lambda: case_posts(chat, [chat_body(marker, stream)] * n, n, 5.0, "502")

    return [
        ("endless-body", f"{n} concurrent whole answers, endless body",
         endless(ENDLESS_BODY, False)),
        ("endless-header", f"{n} concurrent whole answers, endless header",
         endless(ENDLESS_HEADER, False)),
        ("endless-line", f"{n} concurrent streams, endless SSE line", endless(ENDLESS_LINE, True)),
        ("echo", f"{o.echo} concurrent, 16 MB error echoing the key",
         lambda: case_echo(chat, o.echo, key, service)),
    ]  # fmt: skip


async def run_cases(cases: list[Case], o: Options, service: Child, url: str) -> list[Result]:
    return [
        await measure(name, load, service, port_of(url), limits_for(name, o), send())
        for name, load, send in cases
        if name in o.only
    ]


def limits_for(case: str, o: Options) -> Limits:
    """Whole answers in flight each hold up to LLM_MAX_UPSTREAM_RESPONSE_BYTES while they are
    read: that case's peak may be that much higher (and no more)."""
    if case != "endless-body":
        return o.limits
    cap = int(o.service_env.get("LLM_MAX_UPSTREAM_RESPONSE_BYTES", DEFAULT_RESPONSE_CAP))
    extra = o.endless * cap / 2**20
    return Limits(o.limits.peak_mb + extra, o.limits.after_mb, o.limits.health_ms)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def start_hostile_upstream(harness: Harness) -> tuple[Child, str]:
    """This module's hostile model server, as a child on the load core."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.hostile_load", "--upstream-port", str(port)]
    child = harness.spawn("hostile-upstream", argv, harness.machine.load_cpu)
    url = f"http://127.0.0.1:{port}"
    harness.wait_ready(child, f"{url}/health")
    return child, url


def run_all(o: Options) -> tuple[list[Result], dict[str, Any]]:
    machine = Machine.choose(None, None)
    if machine.load_cpu is not None:
        # The load generator shares the load core with the upstreams: the service's core is
        # the service's alone, so a slow health check is the service's own doing.
        os.sched_setaffinity(0, {machine.load_cpu})
    results: list[Result] = []
    key = "hl-" + secrets.token_hex(16)  # no well-known shape: only the configured secret
    info: dict[str, Any] = {"service_cpu": machine.service_cpu, "load_cpu": machine.load_cpu}
    with (
        Harness(machine, ROOT) as harness,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        if set(CLIENT_CASES) & set(o.only):
            fake, upstream = harness.start_upstream("upstream", 0, 1)
            env = {**SHORT_TIMEOUTS, "LLM_MAX_CONCURRENT": "4", **o.service_env}
            service, url = harness.start_service(upstream, env)
            results += runner.run(run_cases(client_cases(o, url), o, service, url))
            harness.stop(service)
            harness.stop(fake)
        if set(UPSTREAM_CASES) & set(o.only):
            _, upstream = start_hostile_upstream(harness)
            # No LLM_MAX_CONCURRENT: each hostile reply must meet its limit, not a 429.
            # DEBUG: the log scanned for the key holds every line the service can write.
            env = {**SHORT_TIMEOUTS, "LLM_VLLM_API_KEY": key, "LLM_LOG_LEVEL": "DEBUG",
                   **o.service_env}  # fmt: skip
            service, url = harness.start_service(upstream, env)
            results += runner.run(run_cases(upstream_cases(o, url, key, service), o, service, url))
            info["service_log_bytes"] = service.log.stat().st_size
    return results, info


def summary(results: list[Result]) -> str:
    rows = [
        "| case | load | statuses | s | RSS MB before / peak / after | health max ms "
        "| detail | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        statuses = ", ".join(f"{k} x{v}" for k, v in r.statuses.items())
        rss = r.rss_mb
        detail = "; ".join(f"{k} {v}" for k, v in r.detail.items() if k != "message")
        verdict = "ok" if r.ok else "FAIL: " + "; ".join(r.failures)
        rows.append(
            f"| {r.name} | {r.load} | {statuses} | {r.seconds:.1f} | "
            f"{rss['before']:.0f} / {rss['peak']:.0f} / {rss['after']:.0f} | "
            f"{r.health_max_ms:.0f} | {detail} | {verdict} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> tuple[Options, int | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(CASES), help=f"of {','.join(CASES)}")
    parser.add_argument("--flood", type=int, default=200, help="connections with endless heads")
    parser.add_argument("--head-mb", type=int, default=25, help="what each would send")
    parser.add_argument("--slow", type=int, default=200, help="slow clients")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds of slow clients")
    parser.add_argument("--chats", type=int, default=200, help="normal requests meanwhile")
    parser.add_argument("--templates", type=int, default=100, help="requests per template")
    parser.add_argument("--endless", type=int, default=100, help="concurrent, per endless kind")
    parser.add_argument("--echo", type=int, default=50, help="requests of the echoed error")
    parser.add_argument("--peak-mb", type=float, default=300.0, help="most RSS growth at peak")
    parser.add_argument("--after-mb", type=float, default=50.0, help="... and 2 s after")
    parser.add_argument("--health-ms", type=float, default=1000.0, help="slowest health check")
    parser.add_argument("--service-env", action="append", default=[], metavar="LLM_X=V")
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = tuple(name for name in args.only.split(",") if name)
    if unknown := set(only) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}")
    options = Options(
        only=only,
        flood=args.flood,
        head_mb=args.head_mb,
        slow=args.slow,
        hold=args.hold,
        chats=args.chats,
        templates=args.templates,
        endless=args.endless,
        echo=args.echo,
        limits=Limits(args.peak_mb, args.after_mb, args.health_ms),
        service_env=dict(item.split("=", 1) for item in args.service_env),
    )
    return options, args.upstream_port


def main(argv: list[str] | None = None) -> int:
    options, upstream_port = parse_args(argv)
    if upstream_port is not None:  # the child: the hostile model server
        uvloop.run(serve_upstream(upstream_port, lifetime=900.0))
        return 0
    raise_nofile_limit(16384)
    started = time.monotonic()
    try:
        results, info = run_all(options)
    except BenchError as exc:
        print(f"hostile_load: {exc}", file=sys.stderr)
        return 2
    print(summary(results), file=sys.stderr)
    ok = all(r.ok for r in results)
    report = {
        "ok": ok,
        "seconds": round(time.monotonic() - started, 1),
        **info,
        "cases": [{**asdict(r), "ok": r.ok} for r in results],
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
