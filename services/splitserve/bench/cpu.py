"""CPU seconds of the serving processes, read from the processes themselves (psutil)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuSample:
    """Cumulative user + system CPU seconds of each watched process, by tier name."""

    seconds: dict[str, float]


class CpuMeter:
    """Watches named processes (tiers) by PID."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}

    def sample(self) -> CpuSample:
        seconds = {}
        for name, process in self._processes.items():
            times = process.cpu_times()
            seconds[name] = times.user + times.system
        return CpuSample(seconds)

    @staticmethod
    def spent(before: CpuSample, after: CpuSample) -> dict[str, float]:
        """CPU seconds each process used between two samples."""
        return {name: after.seconds[name] - before.seconds[name] for name in before.seconds}
