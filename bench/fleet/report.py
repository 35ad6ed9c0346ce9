"""The fleet runs as a table and as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.fleet.replay import RunResult

COLUMNS = (
    ("policy", "policy", "{}"),
    ("requests", "requests", "{}"),
    ("errors", "errors", "{}"),
    ("hit_rate", "cache hit %", "{:.1%}"),
    ("stickiness", "same replica %", "{:.0%}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("imbalance", "imbalance", "{:.2f}"),
    ("instant_imbalance", "inst. imb.", "{:.2f}"),
    ("req_per_s", "req/s", "{:.1f}"),
    ("tok_per_s", "tok/s", "{:.0f}"),
)


def as_dict(result: RunResult) -> dict[str, Any]:
    return {
        "policy": result.policy,
        "requests": result.requests,
        "errors": result.errors,
        "error_kinds": result.error_kinds,
        "hit_rate": result.hit_rate,
        "hit_tokens": result.hit_tokens,
        "query_tokens": result.query_tokens,
        "ttft_p50_ms": result.ttft_p50_ms,
        "ttft_p99_ms": result.ttft_p99_ms,
        "imbalance": result.imbalance,
        "instant_imbalance": result.instant_imbalance,
        "req_per_s": result.req_per_s,
        "tok_per_s": result.tok_per_s,
        "wall_s": result.wall_s,
        "killed_replica": result.killed,
        "prompts_at_replicas": sum(result.prompts.values()),
        "per_replica": result.per_replica,
        "stickiness": result.stickiness,
    }


def table(results: Sequence[RunResult]) -> str:
    rows = [[label for _, label, _ in COLUMNS]]
    for result in results:
        values = as_dict(result)
        rows.append([fmt.format(values[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
