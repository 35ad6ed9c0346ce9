"""What metrics, access logs and tracing add to the relay: a timeit micro-benchmark.

Runs the hot path's own code in one process, without sockets, so the difference is the
observability work alone:

- per chunk: ``UpstreamRelay`` over in-memory batches of parsed upstream chunks, without
  ``on_batch`` and with ``RequestRecord.on_batch`` (metrics on: one histogram observation
  per batch), for batches of 1 chunk (paced streams) and of 32 chunks (unpaced streams);
- per streamed request: the client-disconnect watch (one task waiting on ``receive``);
- per request: ``Observability.begin`` + ``start_generation`` + ``end`` (request id, log
  context, in-flight gauge, counters, histograms, the JSON access line to a null stream),
  with everything off, metrics only, metrics + INFO access line, and metrics + access line
  + tracing into the SDK's in-memory exporter.

    uv run --no-sync python -m bench.observability_cost
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import timeit
from collections.abc import Callable
from typing import Any

from llm_service.http.disconnect import ClientWatch
from llm_service.observability import Metrics, Observability
from llm_service.observability.logs import handler_for
from llm_service.observability.tracing import build_tracing
from llm_service.protocol.opea import ChatRequest
from llm_service.protocol.openai import OpenAIChunkEncoder
from llm_service.rag import BuiltPrompt
from llm_service.serving.chat import Prepared
from llm_service.serving.relay import Answer, FrameList, UpstreamRelay
from llm_service.settings import Settings
from llm_service.upstream.stream import BatchSink

SCOPE: dict[str, Any] = {
    "type": "http", "method": "POST", "path": "/v1/chat/completions",
    "headers": [(b"host", b"127.0.0.1:9000"), (b"content-type", b"application/json"),
                (b"content-length", b"70"), (b"accept", b"*/*")],
}  # fmt: skip
CHUNKS_PER_ANSWER = 64


def chunk(i: int) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {"content": f" tok{i}"},
                                       "finish_reason": None}]}  # fmt: skip


def relay_seconds(
    per_batch: int, on_batch: Callable[[], object] | None, answers: int
) -> tuple[float, float]:
    """Seconds per relayed chunk of ``answers`` answers of 64 chunks, without and with
    ``on_batch``: the best of 9 interleaved runs each (this VM's speed drifts)."""
    batches = [
        [chunk(i) for i in range(start, start + per_batch)]
        for start in range(0, CHUNKS_PER_ANSWER, per_batch)
    ]

    class Upstream:
        """The batches in memory, as the relay's ``BatchSource``."""

        def __init__(self) -> None:
            self.first = batches[0]
            self.rest = iter(batches[1:])

        async def next(self) -> list[dict[str, Any]]:
            return next(self.rest, [])

        async def push(self, sink: BatchSink) -> None:
            return None

        def close(self) -> None:
            return None

    async def upstream() -> Upstream:
        return Upstream()

    async def run(hook: Callable[[], object] | None) -> None:
        for _ in range(answers):
            encoder = OpenAIChunkEncoder("m")
            relay = UpstreamRelay(upstream, encoder, Answer(), lambda _t: None, hook)
            await relay.start()
            await relay.run(FrameList())

    loop = asyncio.new_event_loop()
    plain: list[float] = []
    observed: list[float] = []
    try:
        for _ in range(9):
            plain.append(timeit.timeit(lambda: loop.run_until_complete(run(None)), number=1))
            observed.append(timeit.timeit(lambda: loop.run_until_complete(run(on_batch)), number=1))
    finally:
        loop.close()
    chunks = answers * CHUNKS_PER_ANSWER
    return min(plain) / chunks, min(observed) / chunks


def prepared() -> Prepared:
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    built = BuiltPrompt(messages=[{"role": "user", "content": "hi"}], docs=[])
    out = Prepared(request=request, built=built, params={}, prompt="hi")
    out.answer.text_parts.extend(f" tok{i}" for i in range(CHUNKS_PER_ANSWER))
    out.answer.finish_reason = "stop"
    out.answer.usage = {"prompt_tokens": 7, "completion_tokens": 64, "total_tokens": 71}
    return out


def request_seconds(obs: Observability, number: int) -> float:
    """Seconds of observability work per request (begin, generation, 64 batches, end)."""
    done = prepared()

    def one() -> None:
        record = obs.begin(SCOPE, "/v1/chat/completions")
        record.answer, record.context = done.answer, done.built.context
        obs.start_generation(record, stream=True)
        record.on_batch()
        obs.end(record)

    return min(timeit.repeat(one, number=number, repeat=7)) / number


def watch_seconds(number: int) -> float:
    """Seconds per streamed request for starting and stopping the disconnect watch."""
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        for _ in range(number):
            watch = ClientWatch(receive)
            await asyncio.sleep(0)  # the watcher starts waiting, as during a stream
            watch.finish()
        await asyncio.sleep(0)

    async def empty() -> None:
        for _ in range(number):
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    try:
        with_watch = min(timeit.repeat(lambda: loop.run_until_complete(run()), number=1, repeat=5))
        without = min(timeit.repeat(lambda: loop.run_until_complete(empty()), number=1, repeat=5))
    finally:
        loop.close()
    return (with_watch - without) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=300, help="answers per relay timing")
    parser.add_argument("--requests", type=int, default=3000, help="requests per timing")
    args = parser.parse_args()
    results: dict[str, Any] = {}

    record = Observability(metrics=Metrics()).begin(SCOPE, "/v1/chat/completions")
    for per_batch in (1, 32):
        plain, observed = relay_seconds(per_batch, record.on_batch, args.answers)
        results[f"relay_us_per_chunk_batches_of_{per_batch}"] = {
            "without_on_batch": round(plain * 1e6, 3),
            "with_metrics": round(observed * 1e6, 3),
            "added_ns_per_chunk": round((observed - plain) * 1e9, 1),
        }
    results["on_batch_ns_per_call"] = round(
        min(timeit.repeat(record.on_batch, number=200_000, repeat=7)) / 200_000 * 1e9, 1
    )

    settings = Settings(_env_file=None, model_server_endpoint="http://127.0.0.1:1")
    root = logging.getLogger()
    handler = handler_for(settings, io.StringIO())
    per_request: dict[str, float] = {}
    root.setLevel(logging.WARNING)
    per_request["all_off"] = request_seconds(Observability(), args.requests)
    per_request["metrics"] = request_seconds(Observability(metrics=Metrics()), args.requests)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    per_request["metrics_and_json_access_line"] = request_seconds(
        Observability(metrics=Metrics()), args.requests
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracing = build_tracing(settings, InMemorySpanExporter())
    per_request["metrics_access_line_and_tracing"] = request_seconds(
        Observability(metrics=Metrics(), tracing=tracing), args.requests // 3
    )
    root.removeHandler(handler)
    per_request["disconnect_watch_per_stream"] = watch_seconds(args.requests)
    results["us_per_request"] = {k: round(v * 1e6, 2) for k, v in per_request.items()}
    results["us_per_chunk_spread_over_65_chunks"] = {
        k: round(v * 1e6 / 65, 3) for k, v in per_request.items()
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
