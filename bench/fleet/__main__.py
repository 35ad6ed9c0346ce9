"""python -m bench.fleet: one seeded RAG trace replayed through each routing policy.

Example: python -m bench.fleet --replicas 4 --requests 400 --seed 1 --load 0.8 \\
    --policies least_inflight,prefix_affinity,router:cache_aware,router:round_robin
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.fleet.replay import RunResult, run_policy
from bench.fleet.replicas import Fleet, ReplicaModel, prompt_digest, render_chat
from bench.fleet.report import as_dict, table
from bench.fleet.trace import Trace, TraceConfig, build_trace, prompt_tokens
from bench.harness import ROOT, Harness, Machine, free_port

DEFAULT_POLICIES = "least_inflight,prefix_affinity,router:cache_aware,router:round_robin"


def fleet_capacity(model: ReplicaModel, config: TraceConfig, replicas: int) -> float:
    """Requests per second of the fleet when each replica caches the shared system prompt
    only (what any policy gets): the load every --load is a fraction of."""
    probe = build_trace(config, rate=10.0)
    mean_prompt = statistics.fmean(prompt_tokens(r) for r in probe.requests)
    uncached = mean_prompt - (config.system_tokens + 1) // 16 * 16
    return replicas * model.capacity(uncached, config.answer_tokens)


def expected_prompts(trace: Trace) -> Counter[str]:
    return Counter(prompt_digest(render_chat(r.messages)) for r in trace.requests)


async def run(args: argparse.Namespace, machine: Machine) -> list[RunResult]:
    model = ReplicaModel(max_running=args.max_running, cache_blocks=args.cache_blocks)
    config = TraceConfig(requests=args.requests, seed=args.seed)
    capacity = fleet_capacity(model, config, args.replicas)
    trace = build_trace(config, rate=args.load * capacity)
    sessions = len({r.session for r in trace.requests})
    print(
        f"fleet: {args.replicas} replicas, capacity ~{capacity:.1f} req/s; trace: "
        f"{len(trace.requests)} requests in {sessions} sessions at {trace.rate:.1f} req/s "
        f"over {trace.duration:.1f} s (seed {args.seed})",
        file=sys.stderr,
    )
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    fleet = Fleet([free_port() for _ in range(args.replicas)], model)
    await fleet.start()
    expected = expected_prompts(trace)
    results: list[RunResult] = []
    try:
        with Harness(machine, ROOT) as harness:
            for round_ in range(args.rounds):
                # Each round starts one policy later, so that no policy always runs first.
                shift = round_ % len(policies)
                for policy in policies[shift:] + policies[:shift]:
                    result = await run_policy(
                        harness, fleet, trace, policy, args.kill_at, shlex.split(args.router_args)
                    )
                    same = "same" if result.prompts == expected else "not the same"
                    print(
                        f"{policy}: {result.requests} requests, {result.errors} errors, "
                        f"prompts at the replicas: {same} as the trace's",
                        file=sys.stderr,
                    )
                    results.append(result)
    finally:
        await fleet.close()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--replicas", type=int, default=4)
    add("--requests", type=int, default=400)
    add("--seed", type=int, default=1)
    add("--load", type=float, default=0.8, help="arrival rate as a fraction of capacity")
    add(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated: the service's LLM_ROUTING values, router:<vllm-router policy>",
    )
    add("--rounds", type=int, default=1, help="run every policy this many times, rotating")
    add(
        "--kill-at",
        type=float,
        default=None,
        metavar="FRACTION",
        help="kill replica 0 once this fraction of the trace is sent",
    )
    add(
        "--router-args",
        default="",
        metavar="ARGS",
        help="extra vllm-router flags, e.g. '--balance-abs-threshold 8'",
    )
    add("--max-running", type=int, default=ReplicaModel.max_running)
    add("--cache-blocks", type=int, default=ReplicaModel.cache_blocks)
    add("--service-cpu", type=int, default=None, help="core of the service / vllm-router")
    add("--load-cpu", type=int, default=None, help="core of the replicas and the client")
    add("--json", action="store_true", help="also print the runs as JSON (last line)")
    args = parser.parse_args(argv)
    if args.kill_at is not None and not 0 <= args.kill_at < 1:
        parser.error("--kill-at wants a fraction in [0, 1)")
    machine = Machine.choose(args.service_cpu, args.load_cpu)
    if machine.load_cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {machine.load_cpu})
    results = asyncio.run(run(args, machine))
    print(table(results))
    if args.json:
        doc: dict[str, Any] = {
            "replicas": args.replicas,
            "seed": args.seed,
            "load": args.load,
            "kill_at": args.kill_at,
            "runs": [as_dict(r) for r in results],
        }
        print(json.dumps(doc))


if __name__ == "__main__":
    main()
