"""Fake vLLM replicas on 127.0.0.1, several in one process (their work is all timers).

Each replica models what makes routing matter on a real vLLM:

- a prefix cache of ``cache_blocks`` blocks of ``BLOCK`` tokens, evicted least recently used,
  matched block by block from the start of the prompt as vLLM's automatic prefix caching does;
- one prefill at a time (the accelerator), priced per *uncached* prompt token;
- at most ``max_running`` sequences decoding (vLLM's ``max_num_seqs``), the rest waiting in
  a FIFO queue; each running sequence's token interval grows with the number running.

"Tokens" are whitespace-separated words of the rendered prompt: the trace is made of words,
so this is exact for it and stands in for a real tokenizer elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

BLOCK = 16  # tokens per KV-cache block, vLLM's default block_size
MODEL = "fleet-model"
MAX_MODEL_LEN = 131072


@dataclass(frozen=True)
class ReplicaModel:
    """Timing and size of one replica."""

    max_running: int = 8  # sequences decoding at once (vLLM's max_num_seqs)
    cache_blocks: int = 4096  # prefix-cache capacity in blocks (4096 x 16 = 64k tokens)
    prefill_base_ms: float = 20.0
    prefill_ms_per_token: float = 0.045  # a 4k-token prompt, uncached: ~200 ms
    decode_ms: float = 4.0  # interval between tokens of a sequence running alone
    decode_k: float = 8.0  # the interval is decode_ms x (1 + running / decode_k)

    def prefill_s(self, uncached_tokens: int) -> float:
        return (self.prefill_base_ms + self.prefill_ms_per_token * uncached_tokens) / 1000

    def decode_interval_s(self, running: int) -> float:
        return self.decode_ms * (1 + running / self.decode_k) / 1000

    def capacity(self, uncached_tokens: float, output_tokens: int) -> float:
        """Requests per second one replica sustains: the lower of what its prefills allow
        (one at a time) and what its decode slots allow when all are busy."""
        prefill = self.prefill_s(round(uncached_tokens))
        busy = prefill + output_tokens * self.decode_interval_s(self.max_running)
        return min(1 / prefill, self.max_running / busy)


def render_chat(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The prompt's tokens: a role marker, then the content's words, per message (the fake
    chat template)."""
    tokens: list[str] = []
    for message in messages:
        tokens.append(f"<|{message.get('role', 'user')}|>")
        content = message.get("content") or ""
        if isinstance(content, list):  # content parts: their text, in order
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        tokens.extend(str(content).split())
    tokens.append("<|assistant|>")
    return tokens


_VOCABULARY: dict[str, int] = {}


def token_id(token: str) -> int:
    """The id of a word: one vocabulary for the whole fleet (the replicas serve one model)."""
    return _VOCABULARY.setdefault(token, len(_VOCABULARY))


def prompt_digest(tokens: Sequence[str]) -> str:
    return hashlib.blake2b(" ".join(tokens).encode(), digest_size=12).hexdigest()


def cacheable_tokens(prompt_tokens: int) -> int:
    """Most tokens of a prompt a prefix cache can serve: whole blocks, and never the last
    token (vLLM computes at least one to produce the first output)."""
    return max(0, (prompt_tokens - 1) // BLOCK * BLOCK)


class PrefixCache:
    """Hashed token blocks, each hash covering its whole prefix (as vLLM chains them), LRU."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    @staticmethod
    def block_hashes(tokens: Sequence[str]) -> list[int]:
        hashes: list[int] = []
        parent = 0
        for start in range(0, cacheable_tokens(len(tokens)), BLOCK):
            parent = hash((parent, tuple(tokens[start : start + BLOCK])))
            hashes.append(parent)
        return hashes

    def match(self, hashes: Sequence[int]) -> int:
        """Tokens of the longest cached prefix; the blocks matched become most recent."""
        hit = 0
        for h in hashes:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            hit += 1
        return hit * BLOCK

    def insert(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


@dataclass
class Counters:
    """Cumulative, as vLLM's counters: never reset while the replica lives."""

    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of which found cached
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_ok: int = 0


@dataclass(eq=False)
class Replica:
    """One fake vLLM server: its state, its routes and its listening socket."""

    port: int
    model: ReplicaModel
    index: int = 0
    running: int = 0
    waiting: int = 0
    counters: Counters = field(default_factory=Counters)
    prompts: list[str] = field(default_factory=list)  # digest of each prompt served
    _runner: web.AppRunner | None = None
    _active: set[asyncio.Transport] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.cache = PrefixCache(self.model.cache_blocks)
        self._slots = asyncio.Semaphore(self.model.max_running)
        self._prefill = asyncio.Lock()
        self._running_blocks = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._runner is not None

    @property
    def in_flight(self) -> int:
        return self.running + self.waiting

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/reset_prefix_cache", self._reset)
        app.router.add_post("/tokenize", self._tokenize)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner

    async def kill(self) -> None:
        """Die as a crashed process would: streams cut mid-way, the port refusing."""
        runner, self._runner = self._runner, None
        for transport in list(self._active):
            transport.abort()
        if runner is not None:
            await runner.cleanup()

    def reset(self) -> None:
        """Empty the prefix cache (vLLM's POST /reset_prefix_cache) and forget the prompts."""
        self.cache.clear()
        self.prompts.clear()

    # --- the engine ------------------------------------------------------------------------

    async def generate(self, tokens: Sequence[str], max_tokens: int) -> AsyncGenerator[str, None]:
        """Wait for a slot, prefill what is not cached, then yield ``max_tokens`` words."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        hashes = PrefixCache.block_hashes(tokens)
        blocks = len(tokens) // BLOCK + 1
        self._running_blocks += blocks
        try:
            async with self._prefill:  # looked up when scheduled, as vLLM's scheduler does
                hit = self.cache.match(hashes)
                self.counters.prefix_queries += len(tokens)
                self.counters.prefix_hits += hit
                self.counters.prompt_tokens += len(tokens)
                self.prompts.append(prompt_digest(tokens))
                await asyncio.sleep(self.model.prefill_s(len(tokens) - hit))
                self.cache.insert(hashes)
            for i in range(max_tokens):
                if i:
                    await asyncio.sleep(self.model.decode_interval_s(self.running))
                self.counters.generation_tokens += 1
                yield f" w{i}"
            self.counters.requests_ok += 1
        finally:
            self._running_blocks -= blocks
            self.running -= 1
            self._slots.release()

    # --- routes ----------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": MODEL,
                        "object": "model",
                        "owned_by": "fleet",
                        "max_model_len": MAX_MODEL_LEN,
                    }
                ],
            }
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: a prompt or chat messages to token ids (routers that match
        prefixes on tokens ask for it)."""
        body = await request.json()
        if isinstance(body.get("messages"), list):
            tokens = render_chat(body["messages"])
        elif isinstance(body.get("prompt"), str):
            tokens = body["prompt"].split()
        else:
            return _bad("prompt", "prompt or messages required")
        ids = [token_id(t) for t in tokens]
        return web.json_response(
            {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None}
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response()

    async def _metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_VllmCollector(self))
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _bad("messages", "messages must be a non-empty list")
        return await self._answer(request, body, render_chat(messages), chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return _bad("prompt", "prompt must be a string")
        return await self._answer(request, body, prompt.split(), chat=False)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], tokens: list[str], chat: bool
    ) -> web.StreamResponse:
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        kind = "chat.completion" if chat else "text_completion"
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        transport = request.transport
        if transport is not None:
            self._active.add(transport)
        try:
            if not body.get("stream"):
                async with contextlib.aclosing(self.generate(tokens, max_tokens)) as stream:
                    words = [w async for w in stream]
                text = "".join(words)
                choice: dict[str, Any] = (
                    {"index": 0, "message": {"role": "assistant", "content": text}}
                    if chat
                    else {"index": 0, "text": text}
                )
                choice["finish_reason"] = "length"
                return web.json_response(
                    {
                        "id": rid,
                        "object": kind,
                        "created": created,
                        "model": MODEL,
                        "choices": [choice],
                        "usage": _usage(len(tokens), max_tokens),
                    }
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                obj = f"{kind}.chunk" if chat else kind
                first = True
                # Closed at once when the client goes away (or this replica is killed), so that
                # the sequence leaves its slot then, not when the generator is collected.
                async with contextlib.aclosing(self.generate(tokens, max_tokens)) as stream:
                    async for word in stream:
                        if chat:
                            delta: dict[str, Any] = {"content": word}
                            if first:  # vLLM's first chunk carries the role, after the prefill
                                await resp.write(
                                    _sse(
                                        rid,
                                        obj,
                                        created,
                                        {"delta": {"role": "assistant", "content": ""}},
                                    )
                                )
                            part: dict[str, Any] = {"delta": delta}
                        else:
                            part = {"text": word}
                        first = False
                        await resp.write(_sse(rid, obj, created, part))
                end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
                end["finish_reason"] = "length"
                await resp.write(_sse(rid, obj, created, end))
                if (body.get("stream_options") or {}).get("include_usage"):
                    await resp.write(
                        b"data: "
                        + json.dumps(
                            {
                                "id": rid,
                                "object": obj,
                                "created": created,
                                "model": MODEL,
                                "choices": [],
                                "usage": _usage(len(tokens), max_tokens),
                            }
                        ).encode()
                        + b"\n\n"
                    )
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
            except ConnectionResetError:  # the client went away, or this replica was killed
                pass
            return resp
        finally:
            if transport is not None:
                self._active.discard(transport)


def _bad(param: str, message: str) -> web.Response:
    return web.json_response(
        {
            "object": "error",
            "message": message,
            "param": param,
            "type": "BadRequestError",
            "code": 400,
        },
        status=400,
    )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(rid: str, obj: str, created: int, choice: dict[str, Any]) -> bytes:
    chunk = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": None, **choice}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class _VllmCollector(Collector):
    """The replica's state under vLLM's metric names (vLLM V1: counters in tokens)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def collect(self) -> Iterable[Metric]:
        r, c = self.replica, self.replica.counters
        labels = ["model_name", "engine"]
        values = [MODEL, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        usage = min(1.0, r._running_blocks / r.model.cache_blocks)
        yield gauge("vllm:num_requests_running", "Requests in model execution batches.", r.running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", r.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            c.prefix_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            c.prefix_hits,
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", c.prompt_tokens)
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", c.generation_tokens
        )
        yield counter(
            "vllm:request_success", "Count of successfully processed requests.", c.requests_ok
        )


class Fleet:
    """``n`` replicas on free ports of 127.0.0.1, in this process's event loop."""

    def __init__(self, ports: Sequence[int], model: ReplicaModel) -> None:
        self.model = model
        self.replicas = [Replica(port, model, index=i) for i, port in enumerate(ports)]

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    async def start(self) -> None:
        for replica in self.replicas:
            await replica.start()

    async def close(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                await replica.kill()

    async def revive(self) -> None:
        """Killed replicas back, as restarted processes: empty cache, counters from zero."""
        for i, replica in enumerate(self.replicas):
            if not replica.alive:
                fresh = Replica(replica.port, self.model, index=i)
                await fresh.start()
                self.replicas[i] = fresh

    def reset(self) -> None:
        for replica in self.replicas:
            replica.reset()


async def _serve(n: int, base_port: int, model: ReplicaModel) -> None:
    fleet = Fleet([base_port + i for i in range(n)], model)
    await fleet.start()
    print(",".join(fleet.urls), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fleet.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a fleet on its own: ``python -m bench.fleet.replicas --replicas 4``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--port", type=int, default=8100, help="first port; one per replica")
    parser.add_argument("--max-running", type=int, default=ReplicaModel.max_running)
    parser.add_argument("--cache-blocks", type=int, default=ReplicaModel.cache_blocks)
    args = parser.parse_args(argv)
    model = ReplicaModel(max_running=args.max_running, cache_blocks=args.cache_blocks)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.replicas, args.port, model))


if __name__ == "__main__":
    main()
