"""Per-process CPU time and resident memory from ``/proc`` (no psutil needed)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU time used so far by one process, in seconds, from two sources.

    ``ticks`` is utime + stime of ``/proc/<pid>/stat`` (includes exited threads, 1/CLK_TCK s
    resolution), ``system`` its stime part (kernel: syscalls, loopback TCP); ``sched`` is the
    sum of ``/proc/<pid>/task/*/schedstat`` run times (nanosecond resolution, live threads
    only; None when the kernel does not keep it).
    """

    ticks: float
    sched: float | None
    system: float = 0.0


def cpu_ticks(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of ``pid`` in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    user, system = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (user + system) / CLK_TCK, system / CLK_TCK


def cpu_sched(pid: int) -> float | None:
    """Sum of the run times of ``pid``'s threads in seconds, or None if unavailable."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
        except OSError:
            continue  # the thread exited meanwhile
        total += int(text.split()[0])
    return total / 1e9 if total else None


def cpu(pid: int) -> CpuSample | None:
    """CPU time of ``pid`` so far, or None when the process is gone."""
    try:
        total, system = cpu_ticks(pid)
        return CpuSample(total, cpu_sched(pid), system)
    except (OSError, ValueError, IndexError):
        return None


def self_cpu() -> CpuSample:
    """This process's CPU time (getrusage: microsecond resolution, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    return CpuSample(total, total, usage.ru_stime)


def system_share(start: CpuSample, end: CpuSample) -> float | None:
    """Kernel share of the CPU time between two samples (tick-based), or None."""
    total = end.ticks - start.ticks
    return (end.system - start.system) / total if total > 0 else None


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size (VmRSS) of ``pid`` in MiB; 0.0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(start: CpuSample, end: CpuSample) -> float:
    """CPU seconds between two samples, from the most precise source both have."""
    if start.sched is not None and end.sched is not None and end.sched >= start.sched:
        return end.sched - start.sched
    return end.ticks - start.ticks


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit); new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def core_times() -> dict[int, tuple[float, float, float]]:
    """Per CPU core: (busy, total, steal) seconds since boot from ``/proc/stat``.

    Busy is everything but idle and iowait; steal (time the hypervisor gave to someone
    else) counts as busy, since the core was not ours.
    """
    out: dict[int, tuple[float, float, float]] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if not name.startswith("cpu") or not name[3:].isdigit():
                continue
            ticks = [int(v) for v in values[:8]]
            total = sum(ticks)
            idle = ticks[3] + ticks[4]
            steal = ticks[7] if len(ticks) > 7 else 0
            out[int(name[3:])] = ((total - idle) / CLK_TCK, total / CLK_TCK, steal / CLK_TCK)
    return out


def core_busy_pct(
    start: dict[int, tuple[float, float, float]], end: dict[int, tuple[float, float, float]]
) -> dict[int, float]:
    """Busy percentage of each core between two ``core_times`` samples."""
    return _core_pct(start, end, 0)


def core_steal_pct(
    start: dict[int, tuple[float, float, float]], end: dict[int, tuple[float, float, float]]
) -> dict[int, float]:
    """Stolen percentage of each core (virtual machines) between two samples."""
    return _core_pct(start, end, 2)


def _core_pct(
    start: dict[int, tuple[float, float, float]],
    end: dict[int, tuple[float, float, float]],
    field: int,
) -> dict[int, float]:
    out: dict[int, float] = {}
    for core, now in end.items():
        before = start.get(core, now)
        span = now[1] - before[1]
        out[core] = 100 * (now[field] - before[field]) / span if span > 0 else 0.0
    return out
