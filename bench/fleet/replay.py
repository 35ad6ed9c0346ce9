"""Replay one trace through a router in front of the fleet, and measure the run.

A router is this service (``llm-service serve`` with ``LLM_ROUTING=<policy>``) or
vllm-router (``--policy <policy>``), started as a child process on the service core and
pointed at the same replicas. This process (replicas, load generator, sampler) runs on the
other core.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet.replicas import MODEL, Fleet, prompt_digest, render_chat
from bench.fleet.trace import Request, Trace
from bench.harness import Child, Harness, free_port, http_status

SAMPLE_S = 0.05  # in-flight per replica is sampled this often for the load imbalance


class ReplayError(RuntimeError):
    """A router failed to start."""


@dataclass
class Outcome:
    ok: bool
    ttft: float | None = None  # seconds from sending to the first content token
    tokens: int = 0
    error: str = ""


@dataclass
class RunResult:
    policy: str
    requests: int
    errors: int
    hit_tokens: int
    query_tokens: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    imbalance: float
    instant_imbalance: float
    req_per_s: float
    tok_per_s: float
    wall_s: float
    killed: int | None = None  # index of the replica killed mid-run
    error_kinds: dict[str, int] = field(default_factory=dict)
    prompts: Counter[str] = field(default_factory=Counter)  # digests seen at the replicas
    per_replica: list[int] = field(default_factory=list)  # prompts each replica served
    stickiness: float = float("nan")  # later turns sent where the session's previous turn went

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- routers -------------------------------------------------------------------------------


def service_routing(policy: str) -> dict[str, str]:
    """The service's routing settings for ``policy``: ``LLM_ROUTING`` and, after colons,
    its knobs (``prefix_affinity:balance=1.25:balance_slack=2`` sets LLM_ROUTING_BALANCE
    and LLM_ROUTING_BALANCE_SLACK), so variants can run side by side in one run."""
    name, *knobs = policy.split(":")
    env = {"LLM_ROUTING": name}
    for knob in knobs:
        key, _, value = knob.partition("=")
        env[f"LLM_ROUTING_{key.upper()}"] = value
    return env


async def start_router(
    harness: Harness, policy: str, urls: Sequence[str], router_args: Sequence[str] = ()
) -> tuple[Child, str]:
    """``router:<p>`` is vllm-router with policy p (and ``router_args``); anything else is
    this service's LLM_ROUTING. Returns the child and its base URL once it has answered."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if policy.startswith("router:"):
        # The venv's script when the venv is not on PATH.
        exe = shutil.which("vllm-router") or str(Path(sys.executable).with_name("vllm-router"))
        argv = [
            exe,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            *urls,
            "--policy",
            policy.split(":", 1)[1],
            "--log-level",
            "warning",
            *router_args,
        ]
        child = harness.spawn("vllm-router", argv, harness.machine.service_cpu)
        ready = f"{base}/v1/models"
    else:
        env = {
            **harness.env,
            "LLM_MODEL_SERVER_ENDPOINT": ",".join(urls),
            "LLM_MODEL_SERVER": "vllm",
            "LLM_MODEL_NAME": MODEL,
            "LLM_LOG_LEVEL": "WARNING",
            **service_routing(policy),
        }
        argv = [
            sys.executable,
            "-m",
            "llm_service",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        child = harness.spawn("service", argv, harness.machine.service_cpu, env)
        ready = f"{base}/v1/health_check"
    try:
        await asyncio.to_thread(harness.wait_ready, child, ready, 60.0)
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
                "stream": False,
            }
        ).encode()
        status = await asyncio.to_thread(http_status, f"{base}/v1/chat/completions", body, 10.0)
        if status != 200:
            raise ReplayError(f"{policy}: answered {status} to a first request\n{child.log_tail()}")
    except BaseException:
        harness.stop(child)
        raise
    return child, base


# --- the replica side ----------------------------------------------------------------------


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """(prefix-cache hit tokens, query tokens) from a replica's /metrics."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    hits = queries = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:prefix_cache_hits_total":
                hits += sample.value
            elif sample.name == "vllm:prefix_cache_queries_total":
                queries += sample.value
    return int(hits), int(queries)


async def sample_loads(fleet: Fleet, stop: asyncio.Event, out: list[list[int]]) -> None:
    """In-flight (running + waiting) per replica, every SAMPLE_S, while anything is in
    flight (a killed replica's load counts as 0 from then on)."""
    while not stop.is_set():
        loads = [r.in_flight if r.alive else 0 for r in fleet.replicas]
        if any(loads):
            out.append(loads)
        await asyncio.sleep(SAMPLE_S)


def imbalances(samples: Sequence[Sequence[int]], killed: int | None) -> tuple[float, float]:
    """(imbalance, instant imbalance) of the sampled loads.

    Imbalance: each replica's in-flight averaged over the run, max over mean; the spread of
    the work itself. Instant imbalance: max over mean of each sample, averaged; with a few
    requests per replica it is well above 1 even for a perfect balancer (2 and 1 in flight
    is 1.33), so it is shown beside the other, not instead of it. A replica killed mid-run
    is left out of both."""
    if not samples:
        return float("nan"), float("nan")
    live = [i for i in range(len(samples[0])) if i != killed]
    averages = [sum(sample[i] for sample in samples) / len(samples) for i in live]
    mean = sum(averages) / len(averages)
    overall = max(averages) / mean if mean else float("nan")
    ratios = []
    for sample in samples:
        loads = [sample[i] for i in live]
        total = sum(loads)
        if total:
            ratios.append(max(loads) / (total / len(loads)))
    instant = sum(ratios) / len(ratios) if ratios else float("nan")
    return overall, instant


def session_stickiness(trace: Trace, where: dict[str, int]) -> float:
    """Of the later turns of sessions, the fraction served by the replica that served the
    session's previous turn."""
    last: dict[str, int] = {}
    same = later = 0
    for request in trace.requests:  # in time order, which is turn order within a session
        replica = where.get(prompt_digest(render_chat(request.messages)))
        if replica is None:
            continue
        if request.session in last:
            later += 1
            same += last[request.session] == replica
        last[request.session] = replica
    return same / later if later else float("nan")


# --- the client side -----------------------------------------------------------------------


async def send(session: aiohttp.ClientSession, url: str, request: Request) -> Outcome:
    """One streamed chat completion; ok only with content and the closing [DONE]."""
    sent = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    try:
        async with session.post(
            url, json=request.body(MODEL), headers={"X-Session-ID": request.session}
        ) as resp:
            if resp.status != 200:
                await resp.read()
                return Outcome(False, error=f"http {resp.status}")
            done = False
            async for raw in resp.content:
                line = raw.strip()
                if line.startswith(b"event:") and b"error" in line:
                    return Outcome(False, ttft, tokens, "error event")
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    return Outcome(False, ttft, tokens, "error event")
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if ttft is None:
                            ttft = time.perf_counter() - sent
                        tokens += len(content.split())
            if not done or not tokens:
                return Outcome(False, ttft, tokens, "stream cut")
            return Outcome(True, ttft, tokens)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return Outcome(False, ttft, tokens, type(exc).__name__)


async def replay(
    trace: Trace, base: str, fleet: Fleet, policy: str, kill_at: float | None = None
) -> RunResult:
    """Send the trace at its arrival times; kill replica 0 once ``kill_at`` of it is sent."""
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        before = {r.index: await scrape(session, r.url) for r in fleet.replicas}
        after: dict[int, tuple[int, int]] = {}
        prompts: Counter[str] = Counter()
        served = [0] * len(fleet.replicas)
        where: dict[str, int] = {}  # prompt digest -> replica that served it
        url = f"{base}/v1/chat/completions"
        stop = asyncio.Event()
        samples: list[list[int]] = []
        sampler = asyncio.create_task(sample_loads(fleet, stop, samples))
        kill_index = None if kill_at is None else int(kill_at * len(trace.requests))
        killed: int | None = None
        tasks: list[asyncio.Task[Outcome]] = []
        start = time.perf_counter()
        for n, request in enumerate(trace.requests):
            if n == kill_index:
                victim = fleet.replicas[0]
                after[victim.index] = await scrape(session, victim.url)
                prompts.update(victim.prompts)
                served[victim.index] = len(victim.prompts)
                where.update(dict.fromkeys(victim.prompts, victim.index))
                await victim.kill()
                killed = victim.index
            delay = start + request.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, request)))
        outcomes = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        stop.set()
        await sampler
        for replica in fleet.replicas:
            if replica.alive:
                after[replica.index] = await scrape(session, replica.url)
                prompts.update(replica.prompts)
                served[replica.index] = len(replica.prompts)
                where.update(dict.fromkeys(replica.prompts, replica.index))
    hits = sum(after[i][0] - before[i][0] for i in after)
    queries = sum(after[i][1] - before[i][1] for i in after)
    ttfts = [o.ttft for o in outcomes if o.ok and o.ttft is not None]
    good = [o for o in outcomes if o.ok]
    kinds = Counter(o.error for o in outcomes if not o.ok)
    overall, instant = imbalances(samples, killed)
    return RunResult(
        policy=policy,
        requests=len(outcomes),
        errors=len(outcomes) - len(good),
        hit_tokens=hits,
        query_tokens=queries,
        ttft_p50_ms=percentile(ttfts, 50) * 1000,
        ttft_p99_ms=percentile(ttfts, 99) * 1000,
        imbalance=overall,
        instant_imbalance=instant,
        req_per_s=len(good) / wall,
        tok_per_s=sum(o.tokens for o in good) / wall,
        wall_s=wall,
        killed=killed,
        error_kinds=dict(kinds),
        prompts=prompts,
        per_replica=served,
        stickiness=session_stickiness(trace, where),
    )


async def run_policy(
    harness: Harness,
    fleet: Fleet,
    trace: Trace,
    policy: str,
    kill_at: float | None = None,
    router_args: Sequence[str] = (),
) -> RunResult:
    """Fresh replicas' caches, a fresh router, one replay, the router stopped."""
    await fleet.revive()
    child, base = await start_router(harness, policy, fleet.urls, router_args)
    try:
        fleet.reset()  # after the router's first request: the run starts cold
        return await replay(trace, base, fleet, policy, kill_at)
    finally:
        await asyncio.to_thread(harness.stop, child)
