"""CPU time and memory of a process and its descendants, read from /proc (Linux only).

CPU is utime + stime of every live process in the tree, plus cutime + cstime (children
already reaped), in seconds; take the difference of two readings. Memory is VmRSS and
VmHWM summed over the tree: pages shared between processes count once per process, so
the sum is an upper bound.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its ")".
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """root and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14).
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    return cpu_seconds(descendants(root))


@dataclass(frozen=True, slots=True)
class Memory:
    rss_mb: float
    hwm_mb: float
    # (pid, name, rss MB, hwm MB) per process, to see which process holds what
    processes: tuple[tuple[int, str, float, float], ...]


def tree_memory(root: int) -> Memory:
    procs: list[tuple[int, str, float, float]] = []
    for pid in descendants(root):
        try:
            text = (PROC / str(pid) / "status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        kb = {k: int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "VmHWM")}
        name = fields.get("Name", "?").strip()
        procs.append((pid, name, kb["VmRSS"] / 1024, kb["VmHWM"] / 1024))
    return Memory(
        rss_mb=sum(p[2] for p in procs), hwm_mb=sum(p[3] for p in procs), processes=tuple(procs)
    )


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Cumulative ticks of one core from /proc/stat."""

    busy: int
    idle: int
    steal: int


def core_times() -> dict[int, CoreTimes]:
    cores: dict[int, CoreTimes] = {}
    for line in (PROC / "stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        v = [int(x) for x in values[:8]]
        cores[int(name[3:])] = CoreTimes(
            busy=v[0] + v[1] + v[2] + v[5] + v[6], idle=v[3] + v[4], steal=v[7]
        )
    return cores


def core_load(before: CoreTimes, after: CoreTimes) -> dict[str, float]:
    """Share of one core's time that was busy (any process) and stolen by the hypervisor."""
    busy = after.busy - before.busy
    steal = after.steal - before.steal
    total = max(busy + steal + after.idle - before.idle, 1)
    return {"busy_pct": 100 * busy / total, "steal_pct": 100 * steal / total}


def wait_idle(
    roots: list[int], threshold_pct: float = 5.0, window_s: float = 0.5, max_wait_s: float = 10.0
) -> float:
    """Sleep until every tree uses under threshold_pct of a core; return the seconds waited."""
    start = time.monotonic()
    while True:
        before = [tree_cpu_seconds(r) for r in roots]
        time.sleep(window_s)
        after = [tree_cpu_seconds(r) for r in roots]
        busy = max((a - b) / window_s * 100 for a, b in zip(after, before, strict=True))
        waited = time.monotonic() - start
        if busy < threshold_pct or waited >= max_wait_s:
            return waited
