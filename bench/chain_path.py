"""The Runnable path: ``build_chain(...).astream(...)`` in one process, no HTTP service.

``C`` concurrent loops each stream one answer after another from the model server for
``warmup + duration`` seconds; counts the ``AIMessageChunk``s yielded inside the window and
this process's own CPU time and RSS. Prints one JSON object on stdout::

    python -m bench.chain_path --url http://127.0.0.1:8008 -c 64 [--events]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.runnables import Runnable

from bench.loadgen import percentiles, run_and_print
from bench.procstat import (
    core_busy_pct,
    core_steal_pct,
    core_times,
    cpu_seconds,
    rss_mb,
    system_share,
)
from bench.procstat import self_cpu as own_cpu

INPUT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


async def run(
    url: str, concurrency: int, duration: float, warmup: float, max_tokens: int, events: bool
) -> dict[str, Any]:
    from llm_service import build_chain
    from llm_service.settings import Settings

    settings = Settings(
        _env_file=None,
        model_server_endpoint=url,
        model_server="openai",
        model_name="fake-model",
        default_max_tokens=max_tokens,
    )
    chain = build_chain(settings)
    rss_idle = rss_mb()
    clock = time.perf_counter
    t0 = clock() + warmup
    t1 = t0 + duration
    chunks = 0
    content_chunks = 0
    completed = 0
    ttft: list[float] = []
    gaps: list[float] = []
    errors: Counter[str] = Counter()
    rss_peak = 0.0

    async def worker(index: int) -> None:
        nonlocal chunks, content_chunks, completed
        await asyncio.sleep(min(warmup * 0.5, 1.0) * index / concurrency)
        while clock() < t1:
            start = clock()
            first = 0.0
            last = 0.0
            finished = False
            try:
                async for chunk in _stream(chain, events):
                    now = clock()
                    in_window = t0 <= now < t1
                    if in_window:
                        chunks += 1
                    if chunk.content:
                        if first == 0.0:
                            first = now
                            if t0 <= start < t1:
                                ttft.append(now - start)
                        elif in_window:
                            gaps.append(now - last)
                        last = now
                        if in_window:
                            content_chunks += 1
                    if chunk.response_metadata.get("finish_reason"):
                        finished = True
                end = clock()
                if not finished:
                    errors["no_finish_reason"] += 1
                elif t0 <= end < t1:
                    completed += 1
            except Exception as exc:  # counted by type
                errors[type(exc).__name__] += 1

    async def sampler() -> None:
        nonlocal rss_peak
        while clock() < t1:
            if clock() >= t0:
                rss_peak = max(rss_peak, rss_mb())
            await asyncio.sleep(0.25)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    sampling = asyncio.create_task(sampler())
    await asyncio.sleep(max(0.0, t0 - clock()))
    cpu0, cores0 = own_cpu(), core_times()
    await asyncio.sleep(max(0.0, t1 - clock()))
    cpu1, cores1 = own_cpu(), core_times()
    _, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await sampling
    window = t1 - t0
    cpu_s = cpu_seconds(cpu0, cpu1)
    return {
        "url": url,
        "concurrency": concurrency,
        "stream": True,
        "window_s": window,
        "completed": completed,
        "req_per_s": completed / window,
        "frames": chunks,
        "frames_per_s": chunks / window,
        "content_chunks_per_s": content_chunks / window,
        "ttft_ms": percentiles(ttft),
        "gap_ms": percentiles(gaps),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "workers_cut": len(pending),
        "cpu_s": {"service": cpu_s},
        "cpu_pct": {"service": 100 * cpu_s / window},
        "cpu_system_share": {"service": system_share(cpu0, cpu1)},
        "core_busy_pct": core_busy_pct(cores0, cores1),
        "core_steal_pct": core_steal_pct(cores0, cores1),
        "rss_mb_start": {"service": rss_idle},
        "rss_mb_peak": {"service": rss_peak},
        "rss_mb_last": {"service": rss_mb()},
        "pid": os.getpid(),
    }


def _stream(chain: Runnable[Any, Any], events: bool) -> AsyncIterator[Any]:
    """The chain's message chunks, from ``astream`` or from ``astream_events`` (v2)."""
    return _events(chain) if events else chain.astream(INPUT)


async def _events(chain: Runnable[Any, Any]) -> AsyncIterator[Any]:
    async for event in chain.astream_events(INPUT, version="v2"):
        if event["event"] == "on_chat_model_stream":
            yield event["data"]["chunk"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="model server base URL (no /v1)")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--events", action="store_true", help="consume astream_events(v2) instead of astream"
    )
    args = parser.parse_args(argv)
    return run_and_print(
        lambda: run(
            args.url, args.concurrency, args.duration, args.warmup, args.max_tokens, args.events
        ),
        args.concurrency,
    )


if __name__ == "__main__":
    sys.exit(main())
