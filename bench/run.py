"""Token-relay benchmark of the service against the fake OpenAI server, on two pinned cores.

Core 0 runs the system under test (the service, or the Runnable path); core 1 runs the
fake upstream (``tests/support/fake_openai.py``) and the load generator (``bench.loadgen``). Each
scenario is also run straight against the fake upstream ("upstream alone"): what core 1
manages by itself, and what the load generator costs. Prints Markdown tables and writes all
figures to ``bench/results/latest.json``; ``docs/performance.md`` explains them::

    uv run --no-sync python -m bench.run                 # everything, about 3.5 minutes
    uv run --no-sync python -m bench.run --quick         # smoke run, about 1.5 minutes
    uv run --no-sync python -m bench.run --scenarios stream-64,paced-1000 --duration 5
    uv run --no-sync python -m bench.run --scenarios stream-64 --profile   # + py-spy
    uv run --no-sync python -m bench.run --quick --scenarios stream-1,stream-64 --no-baseline

The unpaced service rows run at the default settings (``LLM_LOG_LEVEL=INFO``: one access
line per request) and again at ``LLM_LOG_LEVEL=WARNING``, alternating row by row between two
services started side by side (this VM's speed drifts, so only rows measured close together
compare); ``--log-levels`` chooses. The other service rows run at the first level.

Every child process is started by this one, pinned with ``taskset``, and stopped at the end
(also on Ctrl-C, SIGTERM or an error; children get SIGTERM if this process dies).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.harness import ROOT, TOKENS, BenchError, Child, Harness, Machine, source_tree
from bench.procstat import core_busy_pct, core_times, raise_nofile_limit, rss_mb
from bench.report import (
    OTHER_LOAD_WARNING_PCT,
    PACED_GAP_MS,
    Row,
    derive,
    growth_table,
    log_level_table,
    main_table,
    median_rows,
    profile_tables,
    summarize_profile,
)

RESULTS = ROOT / "bench" / "results"
PACED_DELAY_MS = PACED_GAP_MS
GROWTH = (1, 10, 100)  # paced streams; the 1000 row is the paced-1000 scenario
UNPACED = {"stream-1": (1, True), "stream-64": (64, True), "stream-256": (256, True),
           "nonstream-64": (64, False)}  # fmt: skip
SCENARIOS = (*UNPACED, "chain-64", "langserve-64", "paced-1000", "growth")


@dataclass
class Options:
    duration: float
    warmup: float
    per_write: int
    scenarios: list[str]
    baseline: bool
    service_env: dict[str, str]
    profile: bool
    py_spy: list[str]
    log_levels: list[str]
    ab_rounds: int = 1
    retries: int = 2
    repeat: int = 1
    quiet_wait: float = 60.0
    drain: float = 30.0


def _kind(stream: bool) -> str:
    return "stream" if stream else "non-stream"


class Bench:
    """Runs the chosen scenarios in an order that needs few process starts."""

    def __init__(self, harness: Harness, options: Options) -> None:
        self.h = harness
        self.o = options
        self.rows: list[Row] = []
        self.profiles: list[dict[str, Any]] = []

    # --- measuring one row -----------------------------------------------------------------

    def loadgen_argv(
        self, url: str, concurrency: int, stream: bool, paced: bool, watch: dict[str, int],
        duration: float,
    ) -> list[str]:  # fmt: skip
        # Paced rows use the Protocol-based client: aiohttp's costs too much per lone chunk.
        module = "bench.paced_load" if paced else "bench.loadgen"
        argv = ["-m", module, "--url", f"{url}/v1/chat/completions",
                "-c", str(concurrency), "--duration", str(duration),
                "--warmup", str(self.o.warmup), "--max-tokens", str(TOKENS),
                "--drain", str(self.o.drain), "--stream" if stream else "--no-stream"]  # fmt: skip
        if paced:
            argv.append("--per-frame-gaps")
        for name, pid in watch.items():
            argv += ["--watch", f"{name}={pid}"]
        return argv

    def loadgen(
        self, url: str, concurrency: int, stream: bool, paced: bool, watch: dict[str, int],
        duration: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        span = self.o.duration if duration is None else duration
        argv = self.loadgen_argv(url, concurrency, stream, paced, watch, span)
        timeout = self.o.warmup + span + self.o.drain + 60
        return self.h.run_json(argv, self.h.machine.load_cpu, timeout)

    def record(self, row: Row, measure: Callable[[], dict[str, Any]]) -> None:
        """Run ``measure`` for ``row``; a failure is noted in the row, not raised.

        When other processes took a share of the pinned cores during the window, wait for
        the machine to be quiet and measure again (``--retries`` times at most).
        """
        for attempt in range(self.o.retries + 1):
            print(f"  {row.label}, {row.target} ...", file=sys.stderr, end=" ", flush=True)
            started = time.monotonic()
            try:
                row.raw = measure()
            except BenchError as exc:
                row.error = str(exc)
                print(f"FAILED\n{exc}", file=sys.stderr, flush=True)
                break
            errors = row.raw.get("errors", 0)
            note = f", {errors} errors {row.raw.get('error_kinds')}" if errors else ""
            print(f"{time.monotonic() - started:.1f} s{note}", file=sys.stderr, flush=True)
            row.derived.clear()
            machine = self.h.machine
            derive([row], machine.service_cpu, machine.load_cpu)
            other = _other_load(row)
            if other <= OTHER_LOAD_WARNING_PCT or attempt == self.o.retries:
                break
            print(f"    {other:.0f}% of a core went to other processes; measuring again "
                  "once the machine is quiet", file=sys.stderr, flush=True)  # fmt: skip
            wait_quiet(self.o.quiet_wait)
        row.derived.clear()
        self.rows.append(row)

    def fail(self, rows: list[Row], error: str) -> None:
        print(f"  FAILED: {error}", file=sys.stderr, flush=True)
        for row in rows:
            row.error = error
            self.rows.append(row)

    # --- scenarios -------------------------------------------------------------------------

    def run(self) -> None:
        for index in range(self.o.repeat):
            if self.o.repeat > 1:
                print(f"round {index + 1} of {self.o.repeat}", file=sys.stderr)
            self.run_once()

    def run_once(self) -> None:
        chosen = set(self.o.scenarios)
        unpaced = [key for key in UNPACED if key in chosen]
        if unpaced or "chain-64" in chosen or "langserve-64" in chosen:
            self.run_unpaced(unpaced, "chain-64" in chosen, "langserve-64" in chosen)
        if "paced-1000" in chosen or "growth" in chosen:
            self.run_paced("growth" in chosen, "paced-1000" in chosen)

    def run_unpaced(self, keys: list[str], chain: bool, langserve: bool = False) -> None:
        print(f"fake upstream: {TOKENS} tokens, no delay, {self.o.per_write} chunks per write",
              file=sys.stderr)  # fmt: skip
        upstream, up_url = self.h.start_upstream("upstream", 0.0, self.o.per_write)
        if self.o.baseline:
            baselines = keys + (["stream-64"] if chain and "stream-64" not in keys else [])
            for key in baselines:
                c, stream = UNPACED[key]
                row = Row(f"{key}/upstream", f"{_kind(stream)} c={c}", "upstream alone", c,
                          stream)  # fmt: skip
                watch = {"upstream": upstream.pid}
                self.record(row, functools.partial(self.loadgen, up_url, c, stream, False, watch))
        if keys or langserve:
            self.run_service_rows(keys, upstream, up_url, langserve)
        if chain:
            row = Row("chain-64", "Runnable astream c=64", "chain", 64,
                      baseline="stream-64/upstream")  # fmt: skip
            argv = ["-m", "bench.chain_path", "--url", up_url, "-c", "64",
                    "--duration", str(self.o.duration), "--warmup", str(self.o.warmup),
                    "--max-tokens", str(TOKENS)]  # fmt: skip
            timeout = self.o.warmup + self.o.duration + 90
            cpu = self.h.machine.service_cpu
            self.record(row, functools.partial(self.h.run_json, argv, cpu, timeout, True))
        self.h.stop(upstream)

    def run_service_rows(
        self, keys: list[str], upstream: Child, up_url: str, langserve: bool = False
    ) -> None:
        levels = self.o.log_levels if keys else self.o.log_levels[:1]
        rows: dict[str, list[Row]] = {level: [] for level in levels}
        for key in keys:
            c, stream = UNPACED[key]
            for level in levels:
                rows[level].append(Row(
                    level_key(key, level, levels), f"{_kind(stream)} c={c} {level}", "service",
                    c, stream, baseline=f"{key}/upstream", log_level=level,
                    versus=level_key(key, levels[-1], levels) if level != levels[-1] else None,
                ))  # fmt: skip
        services: dict[str, tuple[Child, str]] = {}
        try:
            for level in levels:
                env = {**self.o.service_env, "LLM_LOG_LEVEL": level}
                services[level] = self.h.start_service(up_url, env)
        except BenchError as exc:
            for child, _ in services.values():
                self.h.stop(child)
            self.fail([r for level_rows in rows.values() for r in level_rows],
                      f"service did not start: {exc}")  # fmt: skip
            return
        idle = {level: rss_mb(child.pid) for level, (child, _) in services.items()}
        # Row by row, each level in turn (the first level first, then last first, ...): the
        # levels see the same drift of the machine's speed. With --ab-rounds all of it again,
        # each row a fresh copy; the table shows each row's median run.
        turn = 0
        for _ in range(self.o.ab_rounds):
            for index in range(len(keys)):
                order = levels if turn % 2 == 0 else levels[::-1]
                turn += 1
                for level in order:
                    row = dataclasses.replace(rows[level][index], derived={}, runs=[])
                    child, url = services[level]
                    row.idle_rss_mb = idle[level]
                    watch = {"service": child.pid, "upstream": upstream.pid}
                    measure = functools.partial(
                        self.loadgen, url, row.concurrency, row.stream, False, watch
                    )
                    self.record(row, measure)
        for level in levels[1:]:
            self.h.stop(services[level][0])
        service, svc_url = services[levels[0]]
        watch = {"service": service.pid, "upstream": upstream.pid}
        if langserve:  # the LangServe route: the chain's chunks as sse-starlette events
            row = Row("langserve-64", "LangServe /llm/stream c=64", "service", 64,
                      baseline="stream-64/upstream", log_level=levels[0])  # fmt: skip
            row.idle_rss_mb = idle[levels[0]]
            argv = ["-m", "bench.langserve_path", "--url", f"{svc_url}/llm/stream", "-c", "64",
                    "--duration", str(self.o.duration), "--warmup", str(self.o.warmup),
                    "--watch", str(service.pid)]  # fmt: skip
            timeout = self.o.warmup + self.o.duration + 90
            load = self.h.machine.load_cpu
            self.record(row, functools.partial(self.h.run_json, argv, load, timeout))
        if self.o.profile and keys:
            self.run_profile(svc_url, service, watch, "stream-64", 64, paced=False)
        self.h.stop(service)

    def run_paced(self, growth: bool, paced: bool) -> None:
        print(f"paced upstream (bench.paced_upstream): {TOKENS} tokens, {PACED_DELAY_MS:.0f} ms "
              "apart; load client bench.paced_load", file=sys.stderr)  # fmt: skip
        upstream, up_url = self.h.start_paced_upstream("upstream-paced", PACED_DELAY_MS)
        if paced and self.o.baseline:
            row = Row("paced-1000/upstream", "paced c=1000", "upstream alone", 1000, paced=True)
            watch = {"upstream": upstream.pid}
            self.record(row, functools.partial(self.loadgen, up_url, 1000, True, True, watch))
        levels = [*(GROWTH if growth else ()), *((1000,) if paced else ())]
        rows = [
            Row("paced-1000", "paced c=1000", "service", 1000, paced=True,
                baseline="paced-1000/upstream")
            if c == 1000 else Row(f"growth-{c}", f"paced c={c}", "service", c, paced=True)
            for c in levels
        ]  # fmt: skip
        env = {**self.o.service_env, "LLM_LOG_LEVEL": self.o.log_levels[0]}
        for row in rows:
            row.log_level = self.o.log_levels[0]
        try:
            service, svc_url = self.h.start_service(up_url, env)
        except BenchError as exc:
            self.fail(rows, f"service did not start: {exc}")
            self.h.stop(upstream)
            return
        idle = rss_mb(service.pid)
        watch = {"service": service.pid, "upstream": upstream.pid}
        short = max(3.0, self.o.duration / 2)  # growth rows: 20 chunks/s/stream is steady soon
        for row in rows:
            row.idle_rss_mb = idle
            span = self.o.duration if row.concurrency == 1000 else short
            measure = functools.partial(
                self.loadgen, svc_url, row.concurrency, True, True, watch, span
            )
            self.record(row, measure)
        if self.o.profile and paced:
            self.run_profile(svc_url, service, watch, "paced-1000", 1000, paced=True)
        self.h.stop(service)
        self.h.stop(upstream)

    def run_profile(
        self, svc_url: str, service: Child, watch: dict[str, int], key: str, concurrency: int,
        paced: bool,
    ) -> None:  # fmt: skip
        """A row once more, with py-spy sampling the service during the window."""
        out = RESULTS / f"profile-{key}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        label = f"{'paced' if paced else 'stream'} c={concurrency}"
        print(f"  profile: {label} under py-spy ...", file=sys.stderr, flush=True)
        pin = self.h.machine.pin(self.h.machine.load_cpu)
        argv = self.loadgen_argv(svc_url, concurrency, True, paced, watch, self.o.duration)
        load = subprocess.Popen(
            [*pin, sys.executable, *argv], cwd=ROOT, env=self.h.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            time.sleep(self.o.warmup + 0.5)  # the load generator starts in about 0.5 s
            seconds = max(1, int(self.o.duration) - 1)
            spy = subprocess.run(
                [*pin, *self.o.py_spy, "record", "--pid", str(service.pid),
                 "--duration", str(seconds), "--rate", "250", "--nonblocking",
                 "--format", "raw", "--output", str(out)],
                capture_output=True, timeout=seconds + 120, check=False,
            )  # fmt: skip
            stdout, _ = load.communicate(timeout=self.o.duration + self.o.drain + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.communicate()
        if spy.returncode != 0 or not out.is_file():
            message = spy.stderr.decode(errors="replace").strip()[-500:]
            print(f"    py-spy failed: {message}", file=sys.stderr)
            self.profiles.append({"scenario": label, "error": message})
            return
        profile = summarize_profile(out.read_text(errors="replace"))
        profile["scenario"] = label
        profile["file"] = str(out.relative_to(ROOT))
        with contextlib.suppress(ValueError, IndexError):
            raw = json.loads(stdout.decode().strip().splitlines()[-1])
            profile["chunks_per_s_under_profiler"] = raw.get("frames_per_s")
            cpu_s = (raw.get("cpu_s") or {}).get("service")
            if cpu_s and raw.get("frames"):
                profile["cpu_us_per_chunk_under_profiler"] = cpu_s * 1e6 / raw["frames"]
        self.profiles.append(profile)


# --- set-up ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def git_info(ref: str | None) -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip()

    changed = [] if ref else git("status", "--porcelain", "--", "llm_service").splitlines()
    return {
        "ref": ref or "working tree",
        "commit": git("rev-parse", ref or "HEAD"),
        "uncommitted_service_files": changed,
    }


def quiet_check(wait: float, seconds: float = 1.0) -> dict[int, float]:
    """Busy % of each core before starting; waits up to ``wait`` s for a quiet machine."""
    start = core_times()
    time.sleep(seconds)
    busy = core_busy_pct(start, core_times())
    noisy = {core: round(pct) for core, pct in busy.items() if pct > 15}
    if noisy and wait > 0:
        print(f"cores busy (core: %): {noisy}; waiting up to {wait:.0f} s for them to calm",
              file=sys.stderr)  # fmt: skip
        if wait_quiet(wait):
            return quiet_check(0.0, seconds)
    if noisy:
        print(f"warning: cores busy before the benchmark started (core: %): {noisy}; "
              "figures will be lower and noisier", file=sys.stderr)  # fmt: skip
    return busy


def _spin() -> int:
    table: dict[int, int] = {}
    total = 0
    for i in range(100_000):
        table[i & 1023] = i
        total += len(str(i))
    return total


def cpu_speed(machine: Machine, rounds: int = 5) -> dict[str, list[float]]:
    """Milliseconds a fixed pure-Python loop takes on each pinned core (lower: faster).

    Virtual machines' cores change speed with their neighbours' load; this shows it.
    """
    out: dict[str, list[float]] = {}
    before = os.sched_getaffinity(0)
    try:
        for core in (machine.service_cpu, machine.load_cpu):
            if core is None:
                continue
            os.sched_setaffinity(0, {core})
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                _spin()
                times.append(round((time.perf_counter() - start) * 1000, 1))
            out[str(core)] = times
    finally:
        os.sched_setaffinity(0, before)
    return out


def wait_quiet(timeout: float, threshold: float = 8.0) -> bool:
    """Wait until no core is busier than ``threshold`` % over 2 s; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        start = core_times()
        time.sleep(2.0)
        if max(core_busy_pct(start, core_times()).values(), default=0.0) <= threshold:
            return True
        if time.monotonic() >= deadline:
            return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Token-relay benchmark: the service vs the fake upstream on pinned cores.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: 3 s windows, 1 s warm-up, no c=1000")
    add("--duration", type=float, help="measured seconds per row (default 10, quick 3)")
    add("--warmup", type=float, help="seconds before measuring (default 2, quick 1)")
    add("--scenarios", help=f"comma-separated, default all: {', '.join(SCENARIOS)}")
    add("--no-baseline", action="store_true", help="skip the upstream-alone rows")
    add("--repeat", type=int, default=1,
        help="run everything this often; each row shows its median run")  # fmt: skip
    add("--retries", type=int, default=2,
        help="measure a row again (at most this often) when other processes used the "
             "cores meanwhile; 0: never")  # fmt: skip
    add("--per-write", type=int, default=4, help="chunks per write, unpaced upstream (4)")
    add("--service-env", action="append", default=[], metavar="LLM_NAME=VALUE",
        help="extra service setting, e.g. LLM_UPSTREAM_CONNECTIONS=2048")  # fmt: skip
    add("--log-levels", default="INFO,WARNING",
        help="LLM_LOG_LEVEL of the unpaced service rows, measured alternately; the first "
             "(default INFO, the service's default) also runs the other rows")  # fmt: skip
    add("--ab-rounds", type=int, default=1,
        help="measure the unpaced service rows this often, the log levels alternating; "
             "each row shows its median run")  # fmt: skip
    add("--ref", help="benchmark llm_service of this git ref instead of the working tree")
    add("--profile", action="store_true",
        help="also run py-spy on the service (stream c=64; paced c=1000)")  # fmt: skip
    add("--py-spy", help="py-spy command (default: py-spy on PATH, else 'uvx py-spy')")
    add("--service-cpu", type=int, help="core of the system under test (default: first)")
    add("--load-cpu", type=int, help="core of the upstream and load (default: second)")
    add("--json", type=Path, default=RESULTS / "latest.json", help="results file")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if args.scenarios:
        scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = sorted(set(scenarios) - set(SCENARIOS))
        if unknown:
            raise SystemExit(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    else:
        scenarios = [s for s in SCENARIOS if not (args.quick and s == "paced-1000")]
    service_env: dict[str, str] = {}
    for item in args.service_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("LLM_"):
            raise SystemExit(f"--service-env wants LLM_NAME=VALUE, got {item!r}")
        service_env[key] = value
    levels = [level.strip().upper() for level in args.log_levels.split(",") if level.strip()]
    known = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if not levels or len(set(levels)) != len(levels) or set(levels) - set(known):
        raise SystemExit(f"--log-levels wants distinct levels of {known}, got {args.log_levels!r}")
    if "LLM_LOG_LEVEL" in service_env:
        raise SystemExit("set the log level with --log-levels, not --service-env")
    if args.py_spy:
        py_spy = shlex.split(args.py_spy)
    else:
        py_spy = ["py-spy"] if shutil.which("py-spy") else ["uvx", "py-spy"]
    return Options(
        duration=duration,
        warmup=warmup,
        per_write=args.per_write,
        scenarios=scenarios,
        baseline=not args.no_baseline,
        service_env=service_env,
        profile=args.profile,
        py_spy=py_spy,
        log_levels=levels,
        ab_rounds=max(1, args.ab_rounds),
        retries=max(0, args.retries),
        repeat=max(1, args.repeat),
    )


def level_key(key: str, level: str, levels: list[str]) -> str:
    """A row's key: the scenario's at the first log level, ``<key>@<level>`` at the others."""
    return key if level == levels[0] else f"{key}@{level}"


def _other_load(row: Row) -> float:
    """Busy % of the pinned cores that none of the benchmark's processes account for."""
    d = row.derived
    return max(
        d.get("service_core_other_pct") or 0.0,
        d.get("load_core_other_pct") or 0.0,
        d.get("steal_pct") or 0.0,
    )


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    machine = Machine.choose(args.service_cpu, args.load_cpu)
    raise_nofile_limit()  # inherited by every child: c=1000 needs a few thousand sockets
    if machine.load_cpu is not None:
        os.sched_setaffinity(0, {machine.load_cpu})  # keep this process off the service core
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started = time.monotonic()
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench.run", *(sys.argv[1:] if argv is None
                                                              else argv)]),
        "machine": machine_info(),
        "git": git_info(args.ref),
        "options": {
            "duration_s": options.duration, "warmup_s": options.warmup,
            "per_write": options.per_write, "tokens": TOKENS,
            "paced_delay_ms": PACED_DELAY_MS, "scenarios": options.scenarios,
            "service_env": options.service_env, "service_cpu": machine.service_cpu,
            "load_cpu": machine.load_cpu, "log_levels": options.log_levels,
        },
        "cores_busy_before_pct": quiet_check(options.quiet_wait if options.retries else 0.0),
        "cpu_speed_before": cpu_speed(machine),
    }  # fmt: skip
    bench: Bench | None = None
    interrupted = False
    try:
        with source_tree(args.ref) as source, Harness(machine, source) as harness:
            bench = Bench(harness, options)
            bench.run()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; child processes stopped", file=sys.stderr)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
    rows = median_rows(bench.rows) if bench is not None else []
    profiles = bench.profiles if bench is not None else []
    derive(rows, machine.service_cpu, machine.load_cpu)
    info["cpu_speed_after"] = cpu_speed(machine)
    info["elapsed_s"] = round(time.monotonic() - started, 1)
    tables = [main_table(rows), log_level_table(rows), growth_table(rows),
              *map(profile_tables, profiles)]  # fmt: skip
    print("\n\n".join(t for t in tables if t))
    result = {
        **info,
        "interrupted": interrupted,
        "rows": [row.as_json() for row in rows],
        "profile": profiles[0] if profiles else None,
        "profiles": profiles,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"\n{len(rows)} rows in {info['elapsed_s']} s; results in {args.json}",
          file=sys.stderr)  # fmt: skip
    speeds = {when: {core: min(ms) for core, ms in info[f"cpu_speed_{when}"].items()}
              for when in ("before", "after")}  # fmt: skip
    print(f"CPU speed check, ms for a fixed loop per core (lower is faster): {speeds}",
          file=sys.stderr)  # fmt: skip
    noisy = [row.key for row in rows if _other_load(row) > OTHER_LOAD_WARNING_PCT]
    if noisy:
        print(f"warning: other processes (or the hypervisor) used the cores during {noisy}; "
              "rerun those on a quiet machine", file=sys.stderr)  # fmt: skip
    if interrupted:
        return 130
    return 1 if not rows or any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
