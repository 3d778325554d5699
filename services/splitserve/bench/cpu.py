"""CPU seconds of the serving processes (and their child processes), read from the processes themselves (psutil)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuSample:
    """Cumulative user + system CPU seconds of each watched process and its live children, by tier name."""

    seconds: dict[str, float]


class CpuMeter:
    """Watches named tiers, each one or more processes (with their child processes), by PID.

    A watched process's subtree never counts toward another tier: the bench that starts the stack is
    the parent of both tiers, and its own CPU ("client") is the load generator's alone.
    """

    def __init__(self, pids: dict[str, int | list[int]]) -> None:
        self._processes = {name: [psutil.Process(pid) for pid in ([ids] if isinstance(ids, int) else ids)]
                           for name, ids in pids.items()}
        self._roots = {p.pid for processes in self._processes.values() for p in processes}

    def sample(self) -> CpuSample:
        return CpuSample({name: sum(_tree_seconds(p, self._roots) for p in processes)
                          for name, processes in self._processes.items()})

    @staticmethod
    def spent(before: CpuSample, after: CpuSample) -> dict[str, float]:
        """CPU seconds each process used between two samples."""
        return {name: after.seconds[name] - before.seconds[name] for name in before.seconds}


def _tree_seconds(process: psutil.Process, roots: set[int]) -> float:
    """CPU seconds of `process` and its descendants (a generator's engine process, the bench's client
    processes), leaving out the subtrees of other watched processes (`roots`)."""
    try:
        times = process.cpu_times()
        children = process.children()
    except psutil.NoSuchProcess:  # a child that just exited
        return 0.0
    return float(times.user + times.system) + sum(_tree_seconds(c, roots) for c in children if c.pid not in roots)
