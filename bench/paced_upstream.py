"""A paced fake model server for benchmarks: one timer drives every stream, no task per token.

``tests/support/fake_openai.py`` (aiohttp) spends an ``asyncio.sleep``, a task wake-up and an
aiohttp write per token per stream: ≈ 45 µs per paced chunk, so together with the load generator one
core offers only ≈ 12,000 of the 20,000 chunks/s that 1,000 streams of a token every 50 ms
need. This server answers the same requests with the same bytes for a fraction of that:

- a raw ``asyncio.Protocol`` on uvloop with httptools' request parser (HTTP/1.1 keep-alive,
  chunked replies, so the service keeps its pooled upstream connections);
- every chunk is encoded once at start-up (only the content and its index vary between
  chunks, and no stream differs from another), so sending one is one ``transport.write``;
- streams wait in a time wheel of 1 ms slots; one timer per process runs the due slots and
  puts each stream into the slot of its next chunk. A client that goes away is dropped
  when its slot comes up.

Endpoints, shaped like ``tests/support/fake_openai.py``'s: ``POST /v1/chat/completions`` (streamed:
a role-only chunk at once, then a content chunk every ``--delay-ms``, the last one followed
by the finish chunk, the usage chunk when ``stream_options.include_usage``, and
``data: [DONE]``; or one JSON answer), ``GET /v1/models`` (with ``max_model_len``),
``GET /health`` and ``POST /tokenize``::

    python -m bench.paced_upstream --port 8009 --tokens 64 --delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from typing import Any, cast

import httptools
import orjson
import uvloop

TICK_S = 0.001
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n")  # fmt: skip
CHUNKED_END = b"0\r\n\r\n"


def http_chunk(payload: bytes) -> bytes:
    """``payload`` in HTTP/1.1 chunked framing."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class Answers:
    """Every byte string the server sends, encoded once (only content and index vary)."""

    def __init__(self, model: str, tokens: list[str], max_model_len: int) -> None:
        self.model = model
        self.tokens = tokens
        self.max_model_len = max_model_len
        self.head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}  # fmt: skip
        self.role = http_chunk(self.frame({"role": "assistant", "content": ""}))
        self.content = [http_chunk(self.frame({"content": token})) for token in tokens]
        self.finish = {reason: self.frame({}, reason) for reason in ("stop", "length")}

    def frame(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**self.head, "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]})  # fmt: skip

    def tail(self, finish: str, usage: dict[str, int] | None) -> bytes:
        """Finish chunk, usage chunk, [DONE] and the end of the chunked body: one write."""
        frames = self.finish[finish]
        if usage is not None:
            frames += sse({**self.head, "choices": [], "usage": usage})
        return http_chunk(frames + b"data: [DONE]\n\n") + CHUNKED_END


class Stream:
    """One streamed answer: where it is, and where its bytes go."""

    __slots__ = ("conn", "content", "count", "index", "tail")

    def __init__(self, conn: Connection, content: list[bytes], count: int, tail: bytes) -> None:
        self.conn: Connection | None = conn  # None once the client has gone
        self.content = content
        self.count = count  # content chunks to send
        self.index = 0
        self.tail = tail

    def send_next(self) -> bool:
        """Write the due chunk; True while more are to come."""
        conn = self.conn
        if conn is None or conn.transport is None:
            return False  # the client went away: drop the stream
        i = self.index
        if i + 1 < self.count:
            conn.transport.write(self.content[i])
            self.index = i + 1
            return True
        conn.transport.write(self.content[i] + self.tail)
        conn.stream_done()
        return False


class Wheel:
    """Streams waiting for their next chunk, in slots of ``TICK_S``; one timer runs them all.

    A slot holds the streams due in that tick; running it writes each one's chunk and moves
    it ``delay`` slots on. The timer is set for the next slot that holds a stream (so one
    stream costs 20 wake-ups a second, not 1,000), at least ``TICK_S`` ahead: libuv's timers
    count whole milliseconds, and a shorter wait would spin. A late run catches up on every
    slot it missed, in order, so a stream's chunks stay ``delay`` ticks apart on the wheel's
    clock (``time.monotonic``, not the loop's millisecond clock) whatever the timer's jitter.
    """

    def __init__(self, delay_s: float) -> None:
        self.delay = max(1, round(delay_s / TICK_S))
        size = 2
        while size <= self.delay:
            size *= 2
        self.mask = size - 1
        self.slots: list[list[Stream]] = [[] for _ in range(size)]
        self.loop = asyncio.get_running_loop()
        self.origin = time.monotonic()
        self.done = 0  # the last tick run
        self.waiting = 0
        self.timer: asyncio.TimerHandle | None = None

    def _now(self) -> int:
        return int((time.monotonic() - self.origin) / TICK_S)

    def add(self, stream: Stream) -> None:
        now = self._now()
        if self.timer is None:
            self.done = now
        due = min(now + self.delay, self.done + self.mask)  # never a lap ahead
        self.slots[due & self.mask].append(stream)
        self.waiting += 1
        if self.timer is None:  # else it is set for a slot no later than this one
            self._schedule()

    def _schedule(self) -> None:
        slots, mask, tick = self.slots, self.mask, self.done + 1
        while not slots[tick & mask]:  # some slot holds a stream: self.waiting > 0
            tick += 1
        wait = self.origin + tick * TICK_S - time.monotonic()
        self.timer = self.loop.call_later(max(wait, TICK_S), self._run)

    def _run(self) -> None:
        slots, mask, delay = self.slots, self.mask, self.delay
        now = self._now()
        tick = self.done
        while tick < now:
            tick += 1
            due = slots[tick & mask]
            if not due:
                continue
            slots[tick & mask] = []
            later = slots[(tick + delay) & mask]
            before = len(later)
            for stream in due:
                if stream.send_next():
                    later.append(stream)
            self.waiting += len(later) - before - len(due)
        self.done = now
        self.timer = None
        if self.waiting:
            self._schedule()


class Server:
    """What all connections share: the encoded answers and the wheel."""

    def __init__(self, answers: Answers, delay_s: float) -> None:
        self.answers = answers
        self.wheel = Wheel(delay_s)
        models = {"object": "list", "data": [{"id": answers.model, "object": "model",
                                              "max_model_len": answers.max_model_len}]}  # fmt: skip
        self.models = orjson.dumps(models)
        self.tails: dict[tuple[str, int, int | None], bytes] = {}  # few distinct requests

    def stream(self, conn: Connection, body: dict[str, Any]) -> None:
        tokens, finish, usage = self._plan(body)
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        key = (finish, tokens, usage["prompt_tokens"] if include else None)
        tail = self.tails.get(key)
        if tail is None:
            tail = self.tails[key] = self.answers.tail(finish, usage if include else None)
        head = STREAM_HEAD + (b"\r\n" if conn.keep_alive else b"Connection: close\r\n\r\n")
        head += self.answers.role
        assert conn.transport is not None
        if tokens == 0:
            conn.transport.write(head + tail)
            conn.stream_done()
            return
        conn.transport.write(head)
        stream = Stream(conn, self.answers.content, tokens, tail)
        conn.stream = stream
        self.wheel.add(stream)

    def whole(self, body: dict[str, Any]) -> bytes:
        tokens, finish, usage = self._plan(body)
        text = "".join(self.answers.tokens[:tokens])
        return orjson.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": self.answers.model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage,
        })  # fmt: skip

    def _plan(self, body: dict[str, Any]) -> tuple[int, str, dict[str, int]]:
        """Tokens to send, finish reason and usage, as tests/support/fake_openai.py decides them."""
        tokens, finish = len(self.answers.tokens), "stop"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens < tokens:
            tokens, finish = max(0, max_tokens), "length"
        messages = body.get("messages") or []
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        return tokens, finish, {"prompt_tokens": prompt, "completion_tokens": tokens,
                                "total_tokens": prompt + tokens}  # fmt: skip


class Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them one after another."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.keep_alive = True
        self.url = b""
        self.body: list[bytes] = []
        self.queued: deque[tuple[bytes, bytes, bytes, bool]] = deque()  # pipelined requests

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.stream is not None:
            self.stream.conn = None  # the wheel drops it when its slot comes up
            self.stream = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")  # fmt: skip
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (self.parser.get_method(), self.url, b"".join(self.body),
                   self.parser.should_keep_alive())  # fmt: skip
        if self.stream is not None:
            self.queued.append(request)  # answer it when the current stream ends
        else:
            self.handle(*request)

    def stream_done(self) -> None:
        self.stream = None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
        elif self.queued:
            self.handle(*self.queued.popleft())

    def handle(self, method: bytes, url: bytes, raw: bytes, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        path = url.split(b"?", 1)[0]
        server = self.server
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.reply(400, b'{"error":{"message":"body is not JSON"}}')
                return
            if body.get("stream"):
                server.stream(self, body)
            else:
                self.reply(200, server.whole(body))
        elif method == b"GET" and path == b"/v1/models":
            self.reply(200, server.models)
        elif method == b"GET" and path == b"/health":
            self.reply(200, b"")
        elif method == b"POST" and path == b"/tokenize":
            count = len(str(orjson.loads(raw or b"{}").get("prompt", "")).split())
            window = server.answers.max_model_len
            reply = {"count": count, "tokens": list(range(count)), "max_model_len": window}
            self.reply(200, orjson.dumps(reply))
        else:
            self.reply(404, b'{"error":{"message":"not found"}}')

    def reply(self, status: int, body: bytes) -> None:
        if self.transport is None:
            return
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
        close = b"" if self.keep_alive else b"Connection: close\r\n"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n%s\r\n%s"
                             % (status, reason, len(body), close, body))  # fmt: skip
        if not self.keep_alive:
            self.transport.close()


async def serve(host: str, port: int, answers: Answers, delay_s: float) -> None:
    server = Server(answers, delay_s)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Connection(server), host, port, backlog=4096)
    print(f"paced upstream on http://{host}:{port}: {len(answers.tokens)} tokens, "
          f"{delay_s * 1000:g} ms apart", flush=True)  # fmt: skip
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8009)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="time between tokens")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--max-model-len", type=int, default=4096)
    args = parser.parse_args(argv)
    answers = Answers(args.model, [f" tok{i}" for i in range(args.tokens)], args.max_model_len)
    uvloop.run(serve(args.host, args.port, answers, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
