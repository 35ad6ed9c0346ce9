"""Bounded load test: thousands of concurrent paced streams through the service.

``make loadtest`` (not part of ``make test``) starts the fake upstream pacing its tokens
(``tests/support/fake_openai.py --delay-ms``) and the service in front of it (both through
``bench.harness``, pinned to their cores when there are two), opens ``--streams`` streams
ramped in over ``--ramp`` seconds and holds them all open at once, then reports:

- errors: non-200, an ``event: error`` in the stream, no ``data: [DONE]``, exceptions;
- stalls: a stream that got no frame for 2x the pacing interval (after its first frame);
- gaps between frames (p50/p99/max), time to first frame;
- memory: the service's RSS idle, at its peak, after the run, and per open stream.

Prints a Markdown summary on stderr and one JSON object on stdout::

    python -m bench.loadtest --streams 2000 --interval-ms 500 --tokens 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvloop

from bench.harness import ROOT, Harness, Machine
from bench.loadgen import DONE, ERROR_EVENT, FRAME, ROLE, percentiles
from bench.procstat import raise_nofile_limit, rss_mb


@dataclass
class Options:
    streams: int
    interval_ms: float
    tokens: int
    ramp: float
    timeout: float
    service_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Tally:
    """What the streams recorded; times in seconds."""

    done: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    stalls: int = 0  # streams with at least one gap over the stall threshold
    stall_gaps: int = 0  # such gaps, all streams together
    frames: int = 0
    gaps: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    open_now: int = 0
    peak_open: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class LoadTest:
    def __init__(self, options: Options, url: str, service_pid: int) -> None:
        self.o = options
        self.url = f"{url}/v1/chat/completions"
        self.pid = service_pid
        self.tally = Tally()
        self.stall_after = 2 * options.interval_ms / 1000
        self.body = orjson.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": options.tokens,
             "stream": True}
        )  # fmt: skip
        self.rss: list[tuple[float, float, int]] = []  # (t, MB, open streams)

    async def one(self, session: aiohttp.ClientSession, delay: float) -> None:
        await asyncio.sleep(delay)
        t = self.tally
        start = time.monotonic()
        try:
            async with session.post(
                self.url, data=self.body, headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status != 200:
                    await resp.read()
                    t.error(f"http_{resp.status}")
                    return
                t.open_now += 1
                t.peak_open = max(t.peak_open, t.open_now)
                try:
                    await self._read(resp, start)
                finally:
                    t.open_now -= 1
        except Exception as exc:  # every failure is counted, by type
            t.error(type(exc).__name__)

    async def _read(self, resp: aiohttp.ClientResponse, start: float) -> None:
        t = self.tally
        last = 0.0
        stalled = False
        tail = b""
        failed = False
        async for data in resp.content.iter_any():
            now = time.monotonic()
            n = data.count(FRAME)
            if n and last == 0.0 and ROLE in data:
                n -= 1
            if n:
                if last == 0.0:
                    t.ttft.append(now - start)
                else:
                    gap = now - last
                    t.gaps.append(gap)
                    if gap > self.stall_after:
                        t.stall_gaps += 1
                        stalled = True
                last = now
                t.frames += n
            failed = failed or ERROR_EVENT in data
            tail = (tail + data)[-64:]
        if stalled:
            t.stalls += 1
        if failed:
            t.error("sse_error_event")
        elif DONE not in tail:
            t.error("missing_done")
        else:
            t.done += 1

    async def sample(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        while not stop.is_set():
            self.rss.append((time.monotonic() - start, rss_mb(self.pid), self.tally.open_now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def run(self) -> dict[str, Any]:
        o = self.o
        idle = rss_mb(self.pid)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=o.timeout, sock_connect=30)
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample(stop))
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(
                *(self.one(session, o.ramp * i / o.streams) for i in range(o.streams))
            )
        took = time.monotonic() - started
        stop.set()
        await sampler
        await asyncio.sleep(1.0)
        return self.report(idle, rss_mb(self.pid), took)

    def report(self, idle: float, after: float, took: float) -> dict[str, Any]:
        t, o = self.tally, self.o
        _, peak_mb, open_at_peak = max(self.rss, key=lambda s: s[1], default=(0.0, idle, 0))
        full = [mb for _, mb, n in self.rss if n >= o.streams * 0.99]
        return {
            "streams": o.streams,
            "interval_ms": o.interval_ms,
            "tokens": o.tokens,
            "stall_threshold_ms": self.stall_after * 1000,
            "seconds": round(took, 1),
            "completed": t.done,
            "errors": sum(t.errors.values()),
            "error_kinds": t.errors,
            "streams_with_stalls": t.stalls,
            "stall_gaps": t.stall_gaps,
            "peak_open_streams": t.peak_open,
            "frames": t.frames,
            "gap_ms": percentiles(t.gaps),
            "ttft_ms": percentiles(t.ttft),
            "rss_mb": {
                "idle": round(idle, 1),
                "peak": round(peak_mb, 1),
                "open_streams_at_peak": open_at_peak,
                "with_all_streams_open_max": round(max(full), 1) if full else None,
                "after": round(after, 1),
            },
            # With every stream open when that was sampled, else at the peak.
            "kb_per_stream": round(
                (max(full) - idle) * 1024 / o.streams
                if full
                else (peak_mb - idle) * 1024 / max(1, open_at_peak),
                1,
            ),
        }


def summary(result: dict[str, Any]) -> str:
    gap, ttft, rss = result["gap_ms"] or {}, result["ttft_ms"] or {}, result["rss_mb"]
    rows = [
        ("streams (held at once)", f"{result['streams']} ({result['peak_open_streams']})"),
        ("pacing", f"{result['tokens']} tokens, {result['interval_ms']:.0f} ms apart"),
        ("completed with [DONE]", result["completed"]),
        ("errors", f"{result['errors']} {result['error_kinds'] or ''}".strip()),
        (f"stalls (no frame for {result['stall_threshold_ms']:.0f} ms)",
         f"{result['streams_with_stalls']} streams, {result['stall_gaps']} gaps"),
        ("gap p50 / p99 / max ms",
         f"{gap.get('p50', 0):.0f} / {gap.get('p99', 0):.0f} / {gap.get('max', 0):.0f}"),
        ("first frame p50 / p99 ms", f"{ttft.get('p50', 0):.0f} / {ttft.get('p99', 0):.0f}"),
        ("service RSS idle / peak / after MB", f"{rss['idle']} / {rss['peak']} / {rss['after']}"),
        ("RSS per open stream (all open)", f"{result['kb_per_stream']} KB"),
    ]  # fmt: skip
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--interval-ms", type=float, default=500.0, help="upstream pacing")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer (max 64)")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to open all streams")
    parser.add_argument("--timeout", type=float, default=300.0, help="per stream, seconds")
    parser.add_argument("--service-env", action="append", default=[], metavar="LLM_X=V")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.service_env)
    return Options(args.streams, args.interval_ms, min(args.tokens, 64), args.ramp,
                   args.timeout, env)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    raise_nofile_limit(max(8192, 4 * options.streams))
    with Harness(Machine.choose(None, None), ROOT) as harness:
        _, upstream_url = harness.start_upstream("upstream", options.interval_ms, 1)
        service, url = harness.start_service(upstream_url, options.service_env)
        print(f"{options.streams} streams through {url} ...", file=sys.stderr)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(LoadTest(options, url, service.pid).run())
    print(summary(result), file=sys.stderr)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
