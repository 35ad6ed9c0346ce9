"""The LangServe route: ``POST /llm/stream`` at concurrency C, counting ``event: data`` frames.

Run against a service that fronts a fast upstream (see ``bench.run``'s set-up)::

    python -m bench.langserve_path --url http://127.0.0.1:9000/llm/stream -c 64 --watch PID

Prints one JSON object: frames/s (message chunks), streams/s, errors and the CPU share of the
watched service process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from bench.procstat import cpu, cpu_seconds

BODY = {"input": {"messages": [{"role": "user", "content": "hi"}]}, "config": {}, "kwargs": {}}


async def run(
    url: str, concurrency: int, duration: float, warmup: float, pid: int
) -> dict[str, Any]:
    frames = streams = errors = 0
    clock = time.perf_counter
    t0 = clock() + warmup
    t1 = t0 + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal frames, streams, errors
            while clock() < t1:
                try:
                    async with session.post(url, json=BODY) as resp:
                        if resp.status != 200:
                            errors += 1
                            continue
                        async for piece in resp.content.iter_any():
                            if t0 <= clock() < t1:
                                frames += piece.count(b"event: data")
                    if t0 <= clock() < t1:
                        streams += 1
                except aiohttp.ClientError:
                    errors += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(max(0.0, t0 - clock()))
        cpu0 = cpu(pid)
        await asyncio.sleep(max(0.0, t1 - clock()))
        cpu1 = cpu(pid)
        await asyncio.gather(*tasks)
    used = cpu_seconds(cpu0, cpu1) if cpu0 is not None and cpu1 is not None else 0.0
    return {
        "frames_per_s": frames / duration,
        "streams_per_s": streams / duration,
        "errors": errors,
        "service_cpu_pct": 100 * used / duration,
        "service_us_per_frame": 1e6 * used / frames if frames else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--watch", type=int, required=True, help="pid of the service")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.url, args.concurrency, args.duration, args.warmup, args.watch))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
