"""Load client for paced streams: raw asyncio Protocols on uvloop, no task per stream.

``bench.loadgen`` (aiohttp) costs ≈ 37 µs per chunk when every chunk arrives on its own;
next to the upstream on one core it cannot take the 20,000 chunks/s that 1,000 streams of
a token every 50 ms make. This client measures the same things for a fraction of that:
``C`` keep-alive connections each run streams back to back (ramped in like ``loadgen``'s
workers), send a pre-encoded request, and per network read feed httptools' response
parser (status, chunked framing, keep-alive) and do one ``bytes.count`` and one clock read.

What it records is ``loadgen``'s, with the same window rules and the same JSON (so
``bench/report.py`` reads both): TTFT is request sent → first read carrying a content
frame (``data: {`` that is not the role-only first frame), gaps are per frame (a read with
n frames adds the gap since the previous one and n-1 zeros), and errors are non-200,
``event: error``, no ``data: [DONE]``, a connection lost mid-stream, or a stall (no byte for
``--stall-s`` seconds)::

    python -m bench.paced_load --url http://127.0.0.1:8009/v1/chat/completions -c 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from bench.loadgen import DONE, ERROR_EVENT, FRAME, ROLE, Config, LoadGen, parse_args, run_and_print
from bench.procstat import core_times, rss_mb

clock = time.perf_counter
# What the current read has recorded: nothing yet, the stream's TTFT, or a gap.
NEW_READ, FIRST_READ, GAP_READ = 0, 1, 2
BACKOFF_S = 0.05  # after a failure, before the next request: do not spin on a refusing server


class Conn(asyncio.Protocol):
    """One keep-alive connection running one stream after another."""

    def __init__(self, load: PacedLoad) -> None:
        self.load = load
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.active = False  # a request is out and its answer not complete
        self.start = 0.0
        self.first = 0.0
        self.last = 0.0
        self.now = 0.0  # clock at the current read
        self.heard = 0.0  # last byte received (stall check)
        self.read_state = NEW_READ  # what the current read has added so far
        self.carry = b""  # last bytes of the previous body piece: patterns split by reads
        self.in_window = False
        self.status = 0
        self.done = False
        self.error_event = False

    # --- requests ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.load.conns.add(self)
        self.send()

    def send(self) -> None:
        load = self.load
        if self.transport is None or self.transport.is_closing():
            return
        if clock() >= load.t1:
            self.transport.close()
            return
        self.active = True
        self.first = self.last = 0.0
        self.carry = b""
        self.status = 0
        self.done = self.error_event = False
        self.start = self.heard = clock()
        self.in_window = load.t0 <= self.start < load.t1
        if self.in_window:
            load.stats.started_in_window += 1
        load.opened()
        self.transport.write(load.request)

    def finish(self, error: str | None) -> None:
        """The current stream ended (well, or with ``error``); start the next one."""
        if not self.active:
            return
        self.active = False
        load, st = self.load, self.load.stats
        end = clock()
        if error is not None:
            load._error(error, self.start)
        elif self.in_window:
            st.latency.append(end - self.start)
        if error is None and load.t0 <= end < load.t1:
            st.completed += 1
        load.closed()
        if error is not None:
            if self.transport is not None:
                self.transport.close()  # connection_lost connects anew after the back-off
        elif not self.parser.should_keep_alive():
            if self.transport is not None:
                self.transport.close()
        else:
            self.send()

    # --- replies -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.now = self.heard = clock()
        self.read_state = NEW_READ
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.finish("bad_http")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        """Count the frames of one piece of body; the first piece of a read may add a gap."""
        if self.status != 200:
            return
        joined = self.carry + body
        if DONE in joined:
            self.done = True
        if ERROR_EVENT in joined:
            self.error_event = True
        # A frame marker can straddle two pieces, but cannot fit in the carried 6 bytes.
        n = joined[-len(body) - len(FRAME) + 1 :].count(FRAME)
        self.carry = joined[-len(DONE) + 1 :]
        if not n:
            return
        now, load = self.now, self.load
        st = load.stats
        in_window = load.t0 <= now < load.t1
        fresh = self.read_state == NEW_READ
        if self.first == 0.0:
            if ROLE in body:  # the upstream's role-only first frame: no content
                n -= 1
                if n == 0:
                    return
            self.first = now
            self.read_state = FIRST_READ
            if self.in_window:
                st.ttft.append(now - self.start)
        elif in_window and self.read_state != FIRST_READ:
            zeros = n
            if fresh:
                st.gaps.append(now - self.last)
                zeros = n - 1
            if load.config.per_frame_gaps and zeros:
                st.gaps.extend([0.0] * zeros)
            self.read_state = GAP_READ
        self.last = now
        if in_window:
            st.frames += n
            if fresh:
                st.reads += 1

    def stall_kind(self) -> str:
        """Where a stalled stream stopped: before the reply's head, before content, or in it."""
        if self.status == 0:
            return "stall_no_reply"
        return "stall_before_content" if self.first == 0.0 else "stall_mid_stream"

    def on_message_complete(self) -> None:
        if self.status != 200:
            self.finish(f"http_{self.status}")
        elif self.error_event:
            self.finish("sse_error_event")
        elif not self.done:
            self.finish("missing_done")
        else:
            self.finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.load.conns.discard(self)
        if self.active and self.load.cutting:  # cut after the drain: not an error
            self.active = False
            self.load.closed()
        elif self.active:
            self.finish(type(exc).__name__ if exc else "connection_lost")
        self.load.reconnect()


class PacedLoad(LoadGen):
    """``LoadGen``'s bookkeeping and report, with Protocol connections instead of aiohttp."""

    def __init__(self, config: Config, stall_s: float) -> None:
        super().__init__(config)
        url = urlsplit(config.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        head = (f"POST {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n")  # fmt: skip
        self.request = head.encode() + self.body
        self.stall_s = stall_s
        self.conns: set[Conn] = set()
        self.connecting = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.cutting = False
        self.all_closed = asyncio.Event()

    def opened(self) -> None:
        st = self.stats
        st.open_streams += 1
        st.peak_open_streams = max(st.peak_open_streams, st.open_streams)

    def closed(self) -> None:
        self.stats.open_streams -= 1

    def connect(self) -> None:
        if clock() >= self.t1:
            self._check_idle()
            return
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(self._connect())
        self.tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        started = clock()
        try:
            await loop.create_connection(lambda: Conn(self), self.host, self.port)
        except OSError as exc:
            self._error(type(exc).__name__, started)
            loop.call_later(BACKOFF_S, self.connect)
        finally:
            self.connecting -= 1

    def reconnect(self) -> None:
        """A connection closed: replace it (after a pause) while the window lasts."""
        if clock() < self.t1:
            asyncio.get_running_loop().call_later(BACKOFF_S, self.connect)
        else:
            self._check_idle()

    def _check_idle(self) -> None:
        if not self.conns and not self.connecting:
            self.all_closed.set()

    async def watchdog(self) -> None:
        """Fail streams that received nothing for ``stall_s``; close idle connections."""
        while not self.all_closed.is_set():
            now = clock()
            for conn in list(self.conns):
                if conn.active and now - conn.heard > self.stall_s:
                    conn.finish(conn.stall_kind())
                elif not conn.active and now >= self.t1 and conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0.25)

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for name, pid in cfg.watch.items():
            self.rss_start[name] = rss_mb(pid)
        self.t0 = clock() + cfg.warmup
        self.t1 = self.t0 + cfg.duration
        ramp = min(cfg.warmup * 0.5, 1.0)
        for i in range(cfg.concurrency):
            loop.call_later(ramp * i / cfg.concurrency, self.connect)
        sampler = asyncio.create_task(self.sampler())
        watchdog = asyncio.create_task(self.watchdog())
        await asyncio.sleep(max(0.0, self.t0 - clock()))
        self.cpu_start = self._sample_cpu()
        self.cores_start = core_times()
        await asyncio.sleep(max(0.0, self.t1 - clock()))
        self.cpu_end = self._sample_cpu()
        self.cores_end = core_times()
        open_at_end = self.stats.open_streams
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_closed.wait(), cfg.drain)
        cut = self.stats.open_streams
        self.cutting = True
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        self.all_closed.set()
        await sampler
        await watchdog
        return self.report(open_at_end, cut)


def main(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--stall-s", type=float, default=10.0,
                       help="a stream that receives nothing this long is an error")  # fmt: skip
    known, rest = extra.parse_known_args(argv)
    config = parse_args(rest)
    config.stream = True
    config.per_frame_gaps = True
    return run_and_print(PacedLoad(config, known.stall_s).run, config.concurrency)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
