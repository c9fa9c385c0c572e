"""The CPU cores that other processes leave free, for choosing torch's intra-op threads.

On a shared machine a trainer with as many torch threads as cores, next to another busy job, waits at every
parallel region for a thread the OS has parked: measured here, epochs went from 8 s to 50-110 s (5-10x) where
a 1-thread trainer slowed about 2x. :class:`CoreMeter` reads ``/proc/stat`` (all CPU time on the machine) and the
CPU time of this process and its children (the data loader workers) between two samples: the difference is what
other processes used, in cores. :func:`free_threads` turns it into a thread count. Linux only; elsewhere the
meter reports 0 busy cores (threads = cores available to the process).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") and "SC_CLK_TCK" in os.sysconf_names else 100


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``: avx2, avx512_vnni, amx_bf16, ...); empty off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # the CPU flags of native bf16 arithmetic


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast trains yolov6n at 320
    1.7x faster than fp32 (benchmarks/train_levers.py); without it torch emulates bf16 (0.10x on AVX2)."""
    return bool(cpu_flags() & BF16_FLAGS)


def _machine_busy_s() -> float | None:
    """Seconds of CPU time spent busy on the whole machine since boot (``/proc/stat``; None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    guest = sum(v[8:10]) if len(v) > 9 else 0  # guest time is already counted in user / nice
    return (sum(v) - idle - guest) / TICK


def _proc_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state is rest[0], utime/stime rest[11]/rest[12]
    return (int(rest[11]) + int(rest[12])) / TICK


def _children(pid: int) -> list[int]:
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if e.isdigit():
            try:
                stat = Path(f"/proc/{e}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(e))
    return out


def own_cpu_s(pid: int | None = None) -> float:
    """CPU seconds of this process (all its threads) and of its live child processes."""
    pid = pid or os.getpid()
    return _proc_cpu_s(pid) + sum(_proc_cpu_s(c) for c in _children(pid))


class CoreMeter:
    """``others()``: cores used by other processes since the previous call (or since construction)."""

    def __init__(self):
        self._last = self._sample()

    @staticmethod
    def _sample():
        return time.monotonic(), _machine_busy_s(), own_cpu_s()

    def others(self) -> float:
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None or t1 <= t0:
            return 0.0
        # a child that exited in between takes its time out of own: never below 0
        return max(0.0, (busy1 - busy0) - max(0.0, own1 - own0)) / (t1 - t0)


def free_threads(others: float, cores: int | None = None) -> int:
    """Threads for the cores the others leave: ``round(cores - others)``, at least 1."""
    cores = cores or available_cores()
    return int(min(cores, max(1, round(cores - others))))


def measure_others(seconds: float = 0.5) -> float:
    m = CoreMeter()
    time.sleep(seconds)
    return m.others()
