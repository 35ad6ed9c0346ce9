"""Closed-loop HTTP load generator for OpenAI-style chat completions (one process, uvloop).

``C`` workers each send one request after another for ``warmup + duration`` seconds. Only
what happens inside the measured window counts: frames and completions received in it, and
TTFT / latency of requests started in it. Requests still open at the end of the window run
to their end (so that neither side sees streams cut), bounded by ``--drain``.

Per read of a streamed reply it does a ``bytes.count`` and a clock read, nothing more, so it
stays far cheaper per chunk than the servers it drives. Prints one JSON object on stdout::

    python -m bench.loadgen --url http://127.0.0.1:8008/v1/chat/completions -c 64 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvloop

from bench.procstat import (
    CpuSample,
    core_busy_pct,
    core_steal_pct,
    core_times,
    cpu,
    cpu_seconds,
    raise_nofile_limit,
    rss_mb,
    self_cpu,
    system_share,
)

FRAME = b"data: {"
DONE = b"data: [DONE]"
ROLE = b'"role"'
ERROR_EVENT = b"event: error"


def request_body(stream: bool, max_tokens: int = 64) -> bytes:
    return orjson.dumps(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    )


@dataclass
class Config:
    url: str
    concurrency: int
    duration: float
    warmup: float
    stream: bool
    per_frame_gaps: bool = False
    max_tokens: int = 64
    request_timeout: float = 120.0
    drain: float = 30.0
    watch: dict[str, int] = field(default_factory=dict)
    sample_interval: float = 0.25


@dataclass
class Stats:
    """What the workers record; lists hold seconds."""

    frames: int = 0  # SSE data frames received in the window (role-only frames excluded)
    reads: int = 0  # reads that carried frames, in the window
    completed: int = 0  # good answers that ended in the window
    started_in_window: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    errors_in_window: int = 0
    open_streams: int = 0
    peak_open_streams: int = 0


class LoadGen:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Stats()
        self.body = request_body(config.stream, config.max_tokens)
        self.headers = {"Content-Type": "application/json"}
        self.t0 = 0.0  # start of the measured window (perf_counter seconds)
        self.t1 = 0.0  # its end
        self.cpu_start: dict[str, CpuSample] = {}
        self.cpu_end: dict[str, CpuSample] = {}
        self.rss_peak: dict[str, float] = {}
        self.rss_last: dict[str, float] = {}
        self.rss_start: dict[str, float] = {}
        self.cores_start: dict[int, tuple[float, float, float]] = {}
        self.cores_end: dict[int, tuple[float, float, float]] = {}
        self.failures = 0  # errors so far, for the workers' back-off

    def _error(self, kind: str, started: float) -> None:
        self.failures += 1
        self.stats.errors[kind] += 1
        if self.t0 <= started < self.t1:
            self.stats.errors_in_window += 1

    async def one_request(self, session: aiohttp.ClientSession) -> None:
        cfg, st = self.config, self.stats
        clock = time.perf_counter
        t0, t1 = self.t0, self.t1
        start = clock()
        in_window = t0 <= start < t1
        if in_window:
            st.started_in_window += 1
        try:
            async with session.post(cfg.url, data=self.body, headers=self.headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    self._error(f"http_{resp.status}", start)
                    return
                if not cfg.stream:
                    data = await resp.read()
                    now = clock()
                    if b'"choices"' not in data:
                        self._error("no_choices", start)
                        return
                    if in_window:
                        st.ttft.append(now - start)
                        st.latency.append(now - start)
                    if t0 <= now < t1:
                        st.completed += 1
                    return
                await self._read_stream(resp, start, in_window)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is counted, by type
            self._error(type(exc).__name__, start)

    async def _read_stream(
        self, resp: aiohttp.ClientResponse, start: float, in_window: bool
    ) -> None:
        st = self.stats
        clock = time.perf_counter
        t0, t1 = self.t0, self.t1
        gaps = st.gaps
        per_frame = self.config.per_frame_gaps
        first = 0.0
        last = 0.0
        prev_tail = b""
        tail = b""
        failed = False
        st.open_streams += 1
        st.peak_open_streams = max(st.peak_open_streams, st.open_streams)
        try:
            async for data in resp.content.iter_any():
                now = clock()
                n = data.count(FRAME)
                if n:
                    if first == 0.0:
                        if ROLE in data:  # the upstream's role-only first frame: no content
                            n -= 1
                            if n == 0:
                                prev_tail, tail = tail, data
                                continue
                        first = now
                        if in_window:
                            st.ttft.append(now - start)
                    elif t0 <= now < t1:
                        gaps.append(now - last)
                        if per_frame and n > 1:
                            gaps.extend([0.0] * (n - 1))
                    last = now
                    if t0 <= now < t1:
                        st.frames += n
                        st.reads += 1
                    if ERROR_EVENT in data:
                        failed = True
                prev_tail, tail = tail, data
        finally:
            st.open_streams -= 1
        end = clock()
        if failed:
            self._error("sse_error_event", start)
        elif DONE not in prev_tail[-32:] + tail:
            self._error("missing_done", start)
        else:
            if in_window:
                st.latency.append(end - start)
            if t0 <= end < t1:
                st.completed += 1

    async def worker(self, index: int, session: aiohttp.ClientSession) -> None:
        cfg = self.config
        ramp = min(cfg.warmup * 0.5, 1.0)
        await asyncio.sleep(ramp * index / cfg.concurrency)
        while time.perf_counter() < self.t1:
            failures = self.failures
            await self.one_request(session)
            if self.failures != failures:
                await asyncio.sleep(0.05)  # do not spin on a server that refuses

    async def sampler(self) -> None:
        """RSS of the watched processes every ``sample_interval`` s during the window."""
        while time.perf_counter() < self.t1:
            if time.perf_counter() >= self.t0:
                for name, pid in self.config.watch.items():
                    mb = rss_mb(pid)
                    self.rss_last[name] = mb
                    self.rss_peak[name] = max(self.rss_peak.get(name, 0.0), mb)
            await asyncio.sleep(self.config.sample_interval)

    def _sample_cpu(self) -> dict[str, CpuSample]:
        out: dict[str, CpuSample] = {"loadgen": self_cpu()}
        for name, pid in self.config.watch.items():
            sample = cpu(pid)
            if sample is not None:
                out[name] = sample
        return out

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        for name, pid in cfg.watch.items():
            self.rss_start[name] = rss_mb(pid)
        now = time.perf_counter()
        self.t0 = now + cfg.warmup
        self.t1 = self.t0 + cfg.duration
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency, limit_per_host=cfg.concurrency, keepalive_timeout=60
        )
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.create_task(self.worker(i, session)) for i in range(cfg.concurrency)]
            sampler = asyncio.create_task(self.sampler())
            await asyncio.sleep(max(0.0, self.t0 - time.perf_counter()))
            self.cpu_start = self._sample_cpu()
            self.cores_start = core_times()
            await asyncio.sleep(max(0.0, self.t1 - time.perf_counter()))
            self.cpu_end = self._sample_cpu()
            self.cores_end = core_times()
            open_at_end = self.stats.open_streams
            done, pending = await asyncio.wait(tasks, timeout=cfg.drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await sampler
            for task in done:
                if task.exception() is not None:
                    self.stats.errors[f"worker_{type(task.exception()).__name__}"] += 1
        return self.report(open_at_end, len(pending))

    def report(self, open_at_end: int, cut: int) -> dict[str, Any]:
        cfg, st = self.config, self.stats
        window = self.t1 - self.t0
        cpu_s = {
            name: cpu_seconds(self.cpu_start[name], self.cpu_end[name])
            for name in self.cpu_end
            if name in self.cpu_start
        }
        return {
            "url": cfg.url,
            "concurrency": cfg.concurrency,
            "stream": cfg.stream,
            "window_s": window,
            "completed": st.completed,
            "started_in_window": st.started_in_window,
            "req_per_s": st.completed / window,
            "frames": st.frames,
            "frames_per_s": st.frames / window if cfg.stream else None,
            "frames_per_read": st.frames / st.reads if st.reads else None,
            "ttft_ms": percentiles(st.ttft),
            "latency_ms": percentiles(st.latency),
            "gap_ms": percentiles(st.gaps) if cfg.stream else None,
            "gap_samples": len(st.gaps),
            "errors": sum(st.errors.values()),
            "errors_in_window": st.errors_in_window,
            "error_kinds": dict(st.errors),
            "open_streams_at_end": open_at_end,
            "peak_open_streams": st.peak_open_streams,
            "workers_cut": cut,
            "cpu_s": cpu_s,
            "cpu_pct": {name: 100 * s / window for name, s in cpu_s.items()},
            "cpu_system_share": {
                name: system_share(self.cpu_start[name], self.cpu_end[name]) for name in cpu_s
            },
            "core_busy_pct": core_busy_pct(self.cores_start, self.cores_end),
            "core_steal_pct": core_steal_pct(self.cores_start, self.cores_end),
            "rss_mb_start": self.rss_start,
            "rss_mb_peak": self.rss_peak,
            "rss_mb_last": self.rss_last,
            "loadgen_rss_mb": rss_mb(),
        }


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p90/p99/max in milliseconds (nearest rank), or None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    last = len(ordered) - 1

    def pick(q: float) -> float:
        return ordered[min(last, round(q * last))] * 1000

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": ordered[-1] * 1000,
        "n": float(len(ordered)),
    }


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="full URL of /v1/chat/completions")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--per-frame-gaps", action="store_true", help="one gap per frame")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--drain", type=float, default=30.0, help="max seconds to finish")
    parser.add_argument(
        "--watch", action="append", default=[], metavar="NAME=PID", help="process to measure"
    )
    args = parser.parse_args(argv)
    watch: dict[str, int] = {}
    for item in args.watch:
        name, _, pid = item.partition("=")
        watch[name] = int(pid)
    return Config(
        url=args.url,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        stream=args.stream,
        per_frame_gaps=args.per_frame_gaps,
        max_tokens=args.max_tokens,
        request_timeout=args.request_timeout,
        drain=args.drain,
        watch=watch,
    )


def run_and_print(make: Callable[[], Coroutine[Any, Any, dict[str, Any]]], concurrency: int) -> int:
    """Run ``make()`` on uvloop with enough file descriptors; print its result as JSON."""
    raise_nofile_limit(max(4096, 4 * concurrency))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            result = runner.run(make())
        except KeyboardInterrupt:
            return 130
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    return run_and_print(LoadGen(config).run, config.concurrency)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
