"""Turning raw measurements into figures and Markdown tables; py-spy profile summaries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

OTHER_LOAD_WARNING_PCT = 10.0  # busy time on a core that none of our processes account for
STEAL_WARNING_PCT = 2.0  # time a virtual machine's core ran someone else
PACED_GAP_MS = 50.0  # token spacing of the paced upstream


@dataclass
class Row:
    """One measured scenario."""

    key: str
    label: str
    target: str  # "service", "upstream alone" or "chain"
    concurrency: int
    stream: bool = True
    paced: bool = False
    baseline: str | None = None  # key of the upstream-alone row to compare with
    log_level: str | None = None  # the service's LLM_LOG_LEVEL
    versus: str | None = None  # key of the same scenario at the other log level
    idle_rss_mb: float | None = None
    raw: dict[str, Any] | None = None
    error: str | None = None
    derived: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # every repeat's raw figures

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "target": self.target,
            "concurrency": self.concurrency,
            "stream": self.stream,
            "paced": self.paced,
            "baseline": self.baseline,
            "log_level": self.log_level,
            "versus": self.versus,
            "error": self.error,
            **self.derived,
            "raw": self.raw,
            "other_runs": [run for run in self.runs if run is not self.raw],
        }


def _rate(raw: dict[str, Any] | None) -> float:
    if raw is None:
        return -1.0
    return float(raw.get("frames_per_s") or raw.get("req_per_s") or 0.0)


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per scenario: of its repeats, the one with the median throughput.

    The other repeats stay in ``runs``; the spread is noted in ``derived``.
    """
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.key, []).append(row)
    out: list[Row] = []
    for repeats in groups.values():
        measured = sorted((r for r in repeats if r.raw is not None), key=lambda r: _rate(r.raw))
        chosen = measured[(len(measured) - 1) // 2] if measured else repeats[-1]
        chosen.runs = [r.raw for r in repeats if r.raw is not None]
        out.append(chosen)
    return out


def derive(rows: list[Row], service_cpu: int | None, load_cpu: int | None) -> None:
    """Fill ``row.derived`` with the table's figures."""
    by_key = {r.key: r for r in rows}
    for row in rows:
        if row.raw is not None:
            _derive_one(row, service_cpu, load_cpu)
            base = by_key.get(row.baseline or "")
            if base is not None and base.raw is not None:
                _compare(row, base.raw)


def _derive_one(row: Row, service_cpu: int | None, load_cpu: int | None) -> None:
    raw = row.raw or {}
    d = row.derived
    ttft = raw.get("ttft_ms") or {}
    cpu_pct: dict[str, float] = raw.get("cpu_pct") or {}
    cpu_s: dict[str, float] = raw.get("cpu_s") or {}
    cores = {int(k): v for k, v in (raw.get("core_busy_pct") or {}).items()}
    pinned = {c for c in (service_cpu, load_cpu) if c is not None}
    steal = [v for k, v in (raw.get("core_steal_pct") or {}).items() if int(k) in pinned]
    d["steal_pct"] = max(steal) if steal else None
    d["req_per_s"] = raw.get("req_per_s")
    d["chunks_per_s"] = raw.get("frames_per_s")
    d["chunks_per_read"] = raw.get("frames_per_read")
    d["ttft_p50_ms"] = ttft.get("p50")
    d["ttft_p99_ms"] = ttft.get("p99")
    gap = raw.get("gap_ms") or {}
    d["gap_p50_ms"] = gap.get("p50")
    d["gap_p99_ms"] = gap.get("p99")
    d["gap_max_ms"] = gap.get("max")
    d["errors"] = raw.get("errors")
    d["loadgen_cpu_pct"] = cpu_pct.get("loadgen")
    if "loadgen" in cpu_s and raw.get("frames"):
        d["loadgen_us_per_chunk"] = cpu_s["loadgen"] * 1e6 / raw["frames"]
    d["upstream_cpu_pct"] = cpu_pct.get("upstream")
    if load_cpu is not None and load_cpu in cores:
        d["load_core_pct"] = cores[load_cpu]
        if row.target != "chain":
            ours = cpu_pct.get("upstream", 0.0) + cpu_pct.get("loadgen", 0.0)
            d["load_core_other_pct"] = cores[load_cpu] - ours
    if row.target not in ("service", "chain"):
        return
    d["service_cpu_pct"] = cpu_pct.get("service")
    d["service_kernel_share"] = (raw.get("cpu_system_share") or {}).get("service")
    if "service" in cpu_s and raw.get("frames"):
        d["cpu_us_per_chunk"] = cpu_s["service"] * 1e6 / raw["frames"]
    if "service" in cpu_s and raw.get("completed"):
        d["cpu_us_per_request"] = cpu_s["service"] * 1e6 / raw["completed"]
    d["rss_mb"] = (raw.get("rss_mb_peak") or {}).get("service")
    idle = row.idle_rss_mb
    if row.target == "chain":  # the astream process measures its own idle RSS
        idle = (raw.get("rss_mb_start") or {}).get("service")
    d["idle_rss_mb"] = idle
    if d["rss_mb"] and idle:
        d["rss_kb_per_stream"] = (d["rss_mb"] - idle) * 1024 / row.concurrency
    if service_cpu is not None and service_cpu in cores and d["service_cpu_pct"] is not None:
        d["service_core_other_pct"] = cores[service_cpu] - d["service_cpu_pct"]


def _compare(row: Row, base: dict[str, Any]) -> None:
    d = row.derived
    base_req = base.get("req_per_s")
    if base_req and d.get("req_per_s") is not None and not row.paced:
        d["ratio_to_upstream"] = d["req_per_s"] / base_req
    base_ttft = (base.get("ttft_ms") or {}).get("p50")
    if base_ttft is not None and d.get("ttft_p50_ms") is not None:
        d["ttft_p50_added_ms"] = d["ttft_p50_ms"] - base_ttft


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def _notes(row: Row) -> str:
    d = row.derived
    if row.error:
        return "FAILED: " + row.error.splitlines()[0][:100]
    notes: list[str] = []
    if row.target == "service" and row.concurrency == 1 and not row.paced:
        added = d.get("ttft_p50_added_ms")
        if added is not None:
            notes.append(f"TTFT p50 {added:+.2f} ms vs upstream alone")
    if row.paced and row.target == "service" and d.get("rss_kb_per_stream") is not None:
        notes.append(f"{d['rss_kb_per_stream']:.0f} KB RSS per stream")
    peak = (row.raw or {}).get("peak_open_streams")
    if row.paced and peak is not None and peak < row.concurrency:
        notes.append(f"only {peak} of {row.concurrency} streams open at once")
    if not row.stream and row.target == "service" and d.get("cpu_us_per_request"):
        notes.append(f"{d['cpu_us_per_request']:.0f} µs CPU per request")
    if row.paced:  # the harness's share of core 1: was it able to offer the load?
        per_chunk = d.get("loadgen_us_per_chunk")
        cost = f" ({per_chunk:.1f} µs/chunk)" if per_chunk else ""
        notes.append(f"core 1: upstream {_f(d.get('upstream_cpu_pct'))}%, "
                     f"load client {_f(d.get('loadgen_cpu_pct'))}%{cost}")  # fmt: skip
    elif row.target == "upstream alone":
        per_chunk = d.get("loadgen_us_per_chunk")
        cost = f", {per_chunk:.1f} µs/chunk" if per_chunk else ""
        notes.append(f"load generator {_f(d.get('loadgen_cpu_pct'))}% of core 1{cost}")
    if row.target == "chain":
        notes.append("CPU and RSS of the astream process")
    for key, core in (("service_core_other_pct", "core 0"), ("load_core_other_pct", "core 1")):
        other = d.get(key)
        if other is not None and other > OTHER_LOAD_WARNING_PCT:
            notes.append(f"WARNING {other:.0f}% other load on {core}")
    steal = d.get("steal_pct")
    if steal is not None and steal > STEAL_WARNING_PCT:
        notes.append(f"WARNING {steal:.0f}% of a core stolen by the hypervisor")
    if len(row.runs) > 1:
        rates = sorted(_rate(run) for run in row.runs)
        unit = "chunks/s" if row.stream else "req/s"
        notes.append(f"median of {len(rates)} runs ({rates[0]:,.0f} to {rates[-1]:,.0f} {unit})")
    kinds = (row.raw or {}).get("error_kinds")
    if kinds:
        notes.append(", ".join(f"{k}: {v}" for k, v in kinds.items()))
    return "; ".join(notes)


MAIN_COLUMNS = (
    "scenario", "target", "req/s", "chunks/s", "chunks/read", "TTFT p50 ms", "TTFT p99 ms",
    "gap p99 ms", "errors", "service CPU %", "kernel share", "CPU µs/chunk", "RSS MB",
    "core 1 busy %", "ratio to upstream", "notes",
)  # fmt: skip


def _table(columns: tuple[str, ...], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def main_table(rows: list[Row]) -> str:
    body: list[list[str]] = []
    for row in rows:
        if row.key.startswith("growth-"):
            continue
        d = row.derived
        body.append([
            row.label, row.target, _f(d.get("req_per_s"), 1), _f(d.get("chunks_per_s")),
            _f(d.get("chunks_per_read"), 1),
            _f(d.get("ttft_p50_ms"), 2), _f(d.get("ttft_p99_ms"), 1), _f(d.get("gap_p99_ms"), 1),
            _f(d.get("errors")), _f(d.get("service_cpu_pct")), _pct(d.get("service_kernel_share")),
            _f(d.get("cpu_us_per_chunk"), 1),
            _f(d.get("rss_mb"), 1), _f(d.get("load_core_pct")),
            _f(d.get("ratio_to_upstream"), 2), _notes(row),
        ])  # fmt: skip
    return _table(MAIN_COLUMNS, body)


LOG_LEVEL_COLUMNS = (
    "scenario", "levels", "chunks/s", "chunks/s ratio", "TTFT p50 ms", "TTFT p50 added ms",
    "CPU µs/chunk",
)  # fmt: skip


def log_level_table(rows: list[Row]) -> str:
    """Each scenario at the default log level beside the same scenario at the other level
    (measured right after or before it): what the default's log lines cost."""
    by_key = {r.key: r for r in rows}
    body: list[list[str]] = []
    for row in rows:
        other = by_key.get(row.versus or "")
        if other is None or row.raw is None or other.raw is None:
            continue
        a, b = row.derived, other.derived
        ratio = a["chunks_per_s"] / b["chunks_per_s"] if a.get("chunks_per_s") and b.get(
            "chunks_per_s") else None  # fmt: skip
        added = (a["ttft_p50_ms"] - b["ttft_p50_ms"]
                 if a.get("ttft_p50_ms") is not None and b.get("ttft_p50_ms") is not None
                 else None)  # fmt: skip
        a["chunks_per_s_ratio_to_other_level"] = ratio
        a["ttft_p50_added_ms_vs_other_level"] = added
        body.append([
            row.label.rsplit(" ", 1)[0], f"{row.log_level} / {other.log_level}",
            f"{_f(a.get('chunks_per_s'))} / {_f(b.get('chunks_per_s'))}", _f(ratio, 3),
            f"{_f(a.get('ttft_p50_ms'), 2)} / {_f(b.get('ttft_p50_ms'), 2)}",
            f"{added:+.3f}" if added is not None else "",
            f"{_f(a.get('cpu_us_per_chunk'), 1)} / {_f(b.get('cpu_us_per_chunk'), 1)}",
        ])  # fmt: skip
    return _table(LOG_LEVEL_COLUMNS, body) if body else ""


GROWTH_COLUMNS = (
    "paced streams", "target", "chunks/s", "service CPU %", "kernel share", "CPU µs/chunk",
    "RSS MB", "RSS growth MB", "KB per stream", "gap p50 ms", "gap p99 ms", "gap max ms",
    "TTFT p50 ms", "TTFT p99 ms", "errors", "streams per core (est.)", "core 1 busy %",
    "core 1: upstream %", "core 1: load client %",
)  # fmt: skip


def growth_table(rows: list[Row]) -> str:
    chosen = sorted(
        (r for r in rows if r.paced), key=lambda r: (r.concurrency, r.target == "service")
    )
    body: list[list[str]] = []
    for row in chosen:
        d = row.derived
        grown = d["rss_mb"] - d["idle_rss_mb"] if d.get("rss_mb") and d.get("idle_rss_mb") else None
        errors = "FAILED" if row.error else _f(d.get("errors"))
        per_chunk = d.get("cpu_us_per_chunk")
        # Paced streams one core could carry at this CPU cost: 1 s / (cost x chunks/s each).
        per_core = 1e6 / (per_chunk * 1000 / PACED_GAP_MS) if per_chunk else None
        d["streams_per_core_est"] = per_core
        body.append([
            str(row.concurrency), row.target, _f(d.get("chunks_per_s")),
            _f(d.get("service_cpu_pct"), 1),
            _pct(d.get("service_kernel_share")),
            _f(d.get("cpu_us_per_chunk"), 1), _f(d.get("rss_mb"), 1), _f(grown, 1),
            _f(d.get("rss_kb_per_stream")), _f(d.get("gap_p50_ms"), 1),
            _f(d.get("gap_p99_ms"), 1), _f(d.get("gap_max_ms"), 1), _f(d.get("ttft_p50_ms"), 1),
            _f(d.get("ttft_p99_ms"), 1), errors, _f(per_core), _f(d.get("load_core_pct")),
            _f(d.get("upstream_cpu_pct")), _f(d.get("loadgen_cpu_pct")),
        ])  # fmt: skip
    return _table(GROWTH_COLUMNS, body) if body else ""


# --- py-spy ---------------------------------------------------------------------------------


def _package(path: str) -> str:
    """The top-level package of a py-spy frame path (``uvicorn/main.py`` -> ``uvicorn``)."""
    if path.startswith("<"):
        return "other"  # <frozen runpy> and the like
    path = _short(path)
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "other"


def _split_frame(frame: str) -> tuple[str, str]:
    """``func (path/to/file.py:12)`` -> (``func``, ``path/to/file.py``)."""
    name, _, where = frame.partition(" (")
    return name.strip(), where.rstrip(")").rsplit(":", 1)[0]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", "/work/main/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    return path


# Where a sample's time goes in the service, judged by the frames on its stack; the first
# rule that matches wins. Library names are stable; the service's own code goes by file.
# (stage, functions anywhere on the stack, functions as the leaf, leaf file prefixes)
STAGES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("write to the client (uvicorn send or the push relay's DirectWriter)",
     ("RequestResponseCycle.send",),
     ("DirectWriter.__call__", "DirectWriter.flush", "WriteBatch._flush"), ()),
    ("parse upstream SSE (ChunkParser incl. orjson.loads)",
     (), ("UpstreamClient.stream_chat", "ChunkParser.feed", "ChunkParser.ended",
          "UpstreamClient._pump.<locals>.deliver"), ()),
    ("read from upstream (wire.py protocol + HTTP parser; aiohttp for whole answers)",
     ("ResponseHandler.data_received",),
     ("StreamConnection.data_received", "StreamConnection._push", "StreamConnection._take",
      "StreamConnection.read", "StreamConnection.pump"),
     ("aiohttp/streams.py",)),
    ("open the upstream request (aiohttp request, connection pool)",
     ("ClientSession._request", "UpstreamClient._post"), (),
     ("aiohttp/client", "aiohttp/http_writer.py", "aiohttp/connector.py", "aiohappyeyeballs")),
    ("receive the client request (uvicorn httptools protocol)",
     ("HttpToolsProtocol.data_received", "RequestResponseCycle.receive"), (), ()),
    ("parse and validate the request, build the prompt",
     ("parse_request", "read_body", "ChatService.prepare", "PromptStep.abuild"), (),
     ("pydantic",)),
    ("encode and relay chunks (streaming.py)", (), (), ("llm_service/streaming.py",)),
    ("other service code (route, SSEResponse)", (), (), ("llm_service/",)),
    ("FastAPI/Starlette layers (middleware, routing, await chain)",
     (), (), ("starlette/", "fastapi/")),
    ("event loop and asyncio", ("Runner.run",), (), ("asyncio/", "contextlib", "_weakrefset")),
)  # fmt: skip


def _stage(frames: list[tuple[str, str]]) -> str:
    names = {name for name, _ in frames}
    leaf_name, leaf_path = frames[-1][0], _short(frames[-1][1])
    for stage, on_stack, leaves, files in STAGES:
        if names.intersection(on_stack) or leaf_name in leaves:
            return stage
        if files and leaf_path.startswith(files):
            return stage
    return "other"


def summarize_profile(text: str, top: int = 15) -> dict[str, Any]:
    """Share of samples per function (self and inclusive) and per package (self).

    ``text`` is py-spy's ``--format raw`` output: one ``frame;frame;... count`` per line,
    outermost frame first.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        split = [_split_frame(f) for f in frames]
        stages[_stage(split)] += count
        name, path = split[-1]
        own[f"{name} ({_short(path)})"] += count
        areas[_package(path)] += count
        for key in {f"{n} ({_short(p)})" for n, p in split}:
            inclusive[key] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(key, 100 * value / total) for key, value in counter.most_common(n)]

    return {
        "samples": total,
        "self_pct": share(own, top),
        "inclusive_pct": share(inclusive, top),
        "package_self_pct": share(areas, top),
        "stage_pct": share(stages, len(STAGES) + 1),
    }


def profile_tables(profile: dict[str, Any] | None) -> str:
    if not profile or not profile.get("samples"):
        return ""
    per_chunk = profile.get("cpu_us_per_chunk_under_profiler")

    def us(pct: float) -> str:
        return _f(pct * per_chunk / 100, 1) if per_chunk else "-"

    lines = [
        f"py-spy on the service during {profile.get('scenario', 'stream c=64')}: "
        f"{profile['samples']} samples, "
        f"{_f(per_chunk, 1)} µs CPU per chunk under the profiler ({profile.get('file')})",
        "",
        _table(("stage", "% of samples", "≈ µs per chunk"),
               [[name, f"{pct:.1f}", us(pct)] for name, pct in profile["stage_pct"]]),
        "",
        _table(("package (self time)", "% of samples"),
               [[name, f"{pct:.1f}"] for name, pct in profile["package_self_pct"]]),
        "",
        _table(("function (self time)", "% of samples"),
               [[f"`{name}`", f"{pct:.1f}"] for name, pct in profile["self_pct"]]),
    ]  # fmt: skip
    return "\n".join(lines)
