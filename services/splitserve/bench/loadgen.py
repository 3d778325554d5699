"""Drives one load level: closed-loop concurrency or open-loop Poisson arrivals, then measures a window.

Requests run from the start; the first `warmup_s` seconds are not measured. Throughput is the output
tokens that arrived inside the measured window; latency comes from the requests that finish inside it
(steady state). When the window ends no request starts, and those in flight may finish (for up to
`drain_s`) so that their tokens inside the window count; any still running then are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

from splitserve.bench.cpu import CpuMeter
from splitserve.bench.records import RequestRecord, errors_by_code, latency_stats
from splitserve.bench.targets import Target
from splitserve.bench.workload import Workload


@dataclass(frozen=True)
class Level:
    """One load level: `concurrency` streams in flight, or `rate` requests/s (Poisson) capped at `concurrency`."""

    concurrency: int
    rate: float | None = None

    @property
    def label(self) -> str:
        return f"rate={self.rate:g}/s" if self.rate is not None else f"concurrency={self.concurrency}"


@dataclass(frozen=True)
class Window:
    """How long to warm up and to measure, in seconds."""

    warmup_s: float
    duration_s: float
    drain_s: float = 60.0
    # Closed loop: stream i starts i/concurrency of this late, so that streams of equal length do not
    # run in lockstep waves (a server's arrivals never do); keep it under the warm-up.
    stagger_s: float = 0.0


class _Run:
    """The shared state of one level: records, and the measured window's bounds."""

    def __init__(self, target: Target, workload: Workload, progress: Any) -> None:
        self.target, self.workload, self.progress = target, workload, progress
        self.records: list[RequestRecord] = []
        self.window: tuple[float, float] = (float("inf"), float("inf"))

    async def one(self) -> None:
        record = RequestRecord()
        self.records.append(record)
        await self.target.send(self.workload.next_item(), record)
        if self.progress is not None and record.end is not None and self.window[0] <= record.end:
            self.progress.update(1)

    async def worker(self, stop: asyncio.Event, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        while not stop.is_set():
            await self.one()


async def run_level(target: Target, workload: Workload, level: Level, window: Window,
                    cpu: CpuMeter | None, progress: Any = None) -> dict[str, Any]:
    """Runs one level and returns its report (JSON-ready)."""
    start = time.perf_counter() + window.warmup_s
    measured = (start, start + window.duration_s)
    records = asyncio.create_task(drive(target, workload, level, measured, window, progress))
    cpu_s = await measure_cpu(cpu, measured)
    return summarize(await records, level, measured, cpu_s)


async def drive(target: Target, workload: Workload, level: Level, measured: tuple[float, float],
                window: Window, progress: Any = None) -> list[RequestRecord]:
    """Keeps the level's load on from now until the measured window ends, lets the requests in flight
    finish (up to `window.drain_s`), and returns every request's record."""
    run, stop = _Run(target, workload, progress), asyncio.Event()
    run.window = measured
    if level.rate is None:
        tasks = [asyncio.create_task(run.worker(stop, i * window.stagger_s / level.concurrency))
                 for i in range(level.concurrency)]
    else:
        tasks = [asyncio.create_task(_poisson(run, level, stop))]
    await asyncio.sleep(max(0.0, measured[1] - time.perf_counter()))
    stop.set()
    await asyncio.wait(tasks, timeout=window.drain_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return run.records


async def measure_cpu(cpu: CpuMeter | None, measured: tuple[float, float]) -> dict[str, float]:
    """CPU seconds each watched tier spent inside the measured window."""
    if cpu is None:
        return {}
    await asyncio.sleep(max(0.0, measured[0] - time.perf_counter()))
    before = cpu.sample()
    await asyncio.sleep(max(0.0, measured[1] - time.perf_counter()))
    return CpuMeter.spent(before, cpu.sample())


async def _poisson(run: _Run, level: Level, stop: asyncio.Event) -> None:
    """Open loop: exponential gaps at `rate`; at most `concurrency` in flight (arrivals wait beyond it)."""
    assert level.rate is not None
    rng, limit = random.Random(1), asyncio.Semaphore(level.concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def bounded() -> None:
        async with limit:
            await run.one()

    try:
        while not stop.is_set():
            task = asyncio.create_task(bounded())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            with contextlib.suppress(TimeoutError):  # the next arrival, or the window's end
                await asyncio.wait_for(stop.wait(), rng.expovariate(level.rate))
        if in_flight:
            await asyncio.wait(list(in_flight))  # arrivals still waiting for a slot start and finish too
    finally:
        for task in list(in_flight):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*in_flight, return_exceptions=True)


def summarize(records: list[RequestRecord], level: Level, window: tuple[float, float],
              cpu_s: dict[str, float]) -> dict[str, Any]:
    """The level's report: throughput, latency percentiles, errors and CPU per request and per token."""
    start, end = window
    inside = [r for r in records if r.end is not None and start <= r.end <= end]
    done = [r for r in inside if r.ok]
    seconds = end - start
    tokens = sum(r.tokens_between(start, end) for r in records)
    report: dict[str, Any] = {
        "level": level.label, "concurrency": level.concurrency, "rate": level.rate, "seconds": seconds,
        "completed": len(done), "requests_per_s": len(done) / seconds, "output_tokens_per_s": tokens / seconds,
        "output_tokens": round(tokens), "messages_per_request": sum(r.messages for r in done) / max(1, len(done)),
        # Cancelled after the drain: their tokens inside the window are missing from the throughput.
        "unfinished": sum(1 for r in records if r.end is None),
        **latency_stats(done), "errors": errors_by_code(inside), "cpu": {},
    }
    for name, used in cpu_s.items():
        report["cpu"][name] = {"cpu_s": used, "cores": used / seconds,
                               "us_per_output_token": used / max(1, tokens) * 1e6,
                               "ms_per_request": used / max(1, len(done)) * 1e3}
    return report
