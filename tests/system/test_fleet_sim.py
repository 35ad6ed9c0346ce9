"""The fleet simulator (bench/fleet): its replicas count prefix-cache tokens as vLLM does, and
a tiny trace replayed through the service and through vllm-router gives a full report."""

from __future__ import annotations

from collections import Counter

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet.replay import run_policy
from bench.fleet.replicas import Fleet, ReplicaModel, prompt_digest, render_chat
from bench.fleet.report import as_dict, table
from bench.fleet.trace import TraceConfig, build_trace
from bench.harness import ROOT, Harness, Machine
from tests.support.servers import free_port

pytestmark = pytest.mark.system


async def _counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def test_a_replica_counts_prefix_cache_tokens_as_vllm() -> None:
    fleet = Fleet([free_port(), free_port()], ReplicaModel())
    await fleet.start()
    try:
        # 46 words + a role marker + the generation marker: 48 tokens, 3 blocks; sent again,
        # 2 blocks are hits (vLLM computes the last token anyway): 32 of 96 tokens queried.
        body = {"messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(46))}],
                "max_tokens": 3, "stream": True}  # fmt: skip
        url = fleet.urls[0]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/tokenize", json=body) as resp:
                assert (await resp.json())["count"] == 48
            for _ in range(2):
                async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                    frames = [f for f in (await resp.text()).split("\n\n") if f]
                assert frames[-1] == "data: [DONE]"
                assert '"role": "assistant"' in frames[0]
                assert sum('"content": " w' in f for f in frames) == 3
            used = await _counters(session, url)
            idle = await _counters(session, fleet.urls[1])
        assert used["vllm:prefix_cache_queries_total"] == 96
        assert used["vllm:prefix_cache_hits_total"] == 32
        assert used["vllm:generation_tokens_total"] == 6
        assert used["vllm:num_requests_running"] == 0
        assert idle["vllm:prefix_cache_queries_total"] == 0
    finally:
        await fleet.close()


def _expected_hits(prompts: list[list[str]]) -> int:
    """Hit tokens of one replica serving ``prompts`` in order, with room for all: whole
    blocks of 16 from the start that an earlier prompt had, never the last token."""
    seen: set[tuple[str, ...]] = set()
    hits = 0
    for tokens in prompts:
        whole = (len(tokens) - 1) // 16
        matched = 0
        while matched < whole and tuple(tokens[: (matched + 1) * 16]) in seen:
            matched += 1
        hits += matched * 16
        seen.update(tuple(tokens[: (k + 1) * 16]) for k in range(whole))
    return hits


async def test_a_tiny_trace_through_the_service_and_vllm_router() -> None:
    trace = build_trace(TraceConfig(requests=12, seed=3, mean_turns=3.0, think_s=0.3), 15.0)
    by_digest = {prompt_digest(render_chat(r.messages)): render_chat(r.messages)
                 for r in trace.requests}  # fmt: skip
    assert len({r.session for r in trace.requests}) < 12  # some sessions have later turns
    fleet = Fleet([free_port(), free_port()], ReplicaModel())
    await fleet.start()
    results = []
    try:
        with Harness(Machine(None, None), ROOT) as harness:
            for policy in ("least_inflight", "router:round_robin"):
                result = await run_policy(harness, fleet, trace, policy)
                results.append(result)
                served = [[by_digest[d] for d in r.prompts] for r in fleet.replicas]
                assert result.hit_tokens == sum(_expected_hits(p) for p in served)
                assert result.query_tokens == sum(len(t) for t in by_digest.values())
    finally:
        await fleet.close()
    for result in results:
        row = as_dict(result)
        assert row["requests"] == 12
        assert row["errors"] == 0
        assert result.prompts == Counter(by_digest.keys())  # the trace's text reached the replicas
        assert sum(row["per_replica"]) == 12
        assert 0 < row["hit_rate"] == row["hit_tokens"] / row["query_tokens"] < 1
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
        assert 1 <= row["imbalance"] <= 2  # max over mean of 2 replicas
        assert row["req_per_s"] > 0 and row["tok_per_s"] == pytest.approx(32 * row["req_per_s"])
        assert 0 <= row["stickiness"] <= 1
        assert row["killed_replica"] is None
    printed = table(results)
    assert "cache hit %" in printed and "router:round_robin" in printed
