"""What a routing decision costs: the policy's key (prompt text, block hashes) plus its pick
(table look-ups, load bound, recording the prompt's blocks), per request, in-process.

Prompts are RAG-shaped: a shared system prompt, one of ``--prefixes`` distinct documents,
and a question; the table is warmed with every document first, then each decision routes
a random document's prompt with a fresh question. Requests finish at once (loads stay at
zero), so what is measured is the decision alone (and the cyclic garbage collector's
passes that fall into it, which the mean and p99 show)::

    python -m bench.routing_cost                      # 10,000 prefixes, ~6,000-char prompts
    python -m bench.routing_cost --prefixes 1000 --prompt-chars 20000
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from llm_service.upstream.failover import Replica
from llm_service.upstream.routing import LeastInflight, PrefixAffinity

SYSTEM = "You are a helpful assistant. Answer from the documents below only. " * 22


def _prompts(count: int, doc_chars: int, rng: random.Random) -> list[str]:
    words = ["retrieval", "vector", "kernel", "cache", "prefill", "token", "replica", "batch"]
    docs = []
    for i in range(count):
        text = f"[doc {i}] " + " ".join(rng.choice(words) for _ in range(doc_chars // 7))
        docs.append(text[:doc_chars])
    return docs


def _payload(doc: str, question: str, user: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{doc}\n\nQuestion: {question}"},
        ]
    }
    if user is not None:
        payload["user"] = user
    return payload


def measure(
    policy: LeastInflight,
    replicas: list[Replica],
    docs: list[str],
    decisions: int,
    rng: random.Random,
    sessions: bool = False,
) -> tuple[float, float, float]:
    """(p50, mean, p99) microseconds per decision."""
    for i, doc in enumerate(docs):  # warm the table with every prefix
        policy.pick(replicas, [], policy.key(_payload(doc, f"q{i}"), None), 0.0)
    clock = time.perf_counter_ns
    times = []
    for i in range(decisions):
        # Built just before its decision, as a request's body is parsed just before: the
        # prompt is in the CPU's caches, as in the service.
        payload = _payload(
            rng.choice(docs),
            f"What does part {i} say about caching?",
            f"user-{rng.randrange(1000)}" if sessions else None,
        )
        start = clock()
        policy.pick(replicas, [], policy.key(payload, None), 0.0)
        times.append(clock() - start)
    times.sort()
    return (
        statistics.median(times) / 1000,
        statistics.fmean(times) / 1000,
        times[len(times) * 99 // 100] / 1000,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", type=int, default=10_000)
    parser.add_argument("--prompt-chars", type=int, default=6_000)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--block-chars", type=int, default=256)
    parser.add_argument("--table-size", type=int, default=100_000)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    doc_chars = max(100, args.prompt_chars - len(SYSTEM) - 60)
    docs = _prompts(args.prefixes, doc_chars, rng)
    prompt_chars = len(SYSTEM) + doc_chars + 60

    def replicas() -> list[Replica]:
        return [
            Replica(f"http://10.0.0.{i}:8000", f"http://10.0.0.{i}:8000/v1/chat/completions")
            for i in range(args.replicas)
        ]

    rows = []
    cases: list[tuple[str, LeastInflight, bool]] = [
        ("least_inflight", LeastInflight(), False),
        (
            "prefix_affinity",
            PrefixAffinity(block_chars=args.block_chars, table_size=args.table_size),
            False,
        ),
        (
            "prefix_affinity+user",
            PrefixAffinity(block_chars=args.block_chars, table_size=args.table_size),
            True,
        ),
    ]
    for name, policy, sessions in cases:
        p50, mean, p99 = measure(policy, replicas(), docs, args.decisions, rng, sessions)
        table = policy.table_entries if isinstance(policy, PrefixAffinity) else 0
        rows.append((name, args.prefixes, prompt_chars, args.replicas, table, p50, mean, p99))
    print(
        "| policy | prefixes | prompt chars | replicas | table entries "
        "| µs/decision p50 | µs/decision mean | µs/decision p99 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, prefixes, chars, count, table, p50, mean, p99 in rows:
        print(
            f"| {name} | {prefixes} | {chars} | {count} | {table} "
            f"| {p50:.1f} | {mean:.1f} | {p99:.1f} |"
        )


if __name__ == "__main__":
    main()
