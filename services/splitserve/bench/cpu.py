"""CPU seconds of the serving processes (and their child processes), read from the processes themselves (psutil)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuSample:
    """Cumulative user + system CPU seconds of each watched process and its live children, by tier name."""

    seconds: dict[str, float]


class CpuMeter:
    """Watches named tiers, each one or more processes, by PID."""

    def __init__(self, pids: dict[str, int | list[int]]) -> None:
        self._processes = {name: [psutil.Process(pid) for pid in ([ids] if isinstance(ids, int) else ids)]
                           for name, ids in pids.items()}

    def sample(self) -> CpuSample:
        return CpuSample({name: sum(_tree_seconds(p) for p in processes)
                          for name, processes in self._processes.items()})

    @staticmethod
    def spent(before: CpuSample, after: CpuSample) -> dict[str, float]:
        """CPU seconds each process used between two samples."""
        return {name: after.seconds[name] - before.seconds[name] for name in before.seconds}


def _tree_seconds(process: psutil.Process) -> float:
    """A tier's CPU seconds, its engine process included (generator --engine-process)."""
    total = 0.0
    for member in (process, *process.children(recursive=True)):
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:  # a child that just exited
            continue
        total += times.user + times.system
    return total
