"""Load from several client processes: one Python client's event loop saturates before a scaled-out stack.

Each process drives its share of the level's concurrency (or request rate) over its own channels and
returns its request records; timestamps are `perf_counter`, one monotonic clock for every process on
the host, so the records merge into one window. The processes are children of the bench, so the
bench's own CPU (reported as the "client") includes them.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc

from splitserve.bench.cpu import CpuMeter
from splitserve.bench.loadgen import Level, Window, drive, measure_cpu, summarize
from splitserve.bench.records import RequestRecord
from splitserve.bench.targets import GrpcTarget
from splitserve.bench.workload import LengthSpec, Workload

START_SLACK_S = 0.2  # time for every process to receive its share before the load starts


@dataclass(frozen=True)
class ClientSpec:
    """What every client process needs to build its workload and target."""

    addresses: list[str]
    timeout: float
    model_path: str
    input_len: LengthSpec
    output_len: LengthSpec
    prompts_file: Path | None
    seed: int


_workload: Workload | None = None  # one per client process, built once by the pool's initializer


def client_pool(spec: ClientSpec, processes: int) -> ProcessPoolExecutor:
    """A pool of started client processes (each has loaded its tokenizer)."""
    pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_init, initargs=(spec,))
    list(pool.map(_ready, range(processes)))  # brings every process up before any level is timed
    return pool


async def run_level_in_processes(pool: ProcessPoolExecutor, processes: int, spec: ClientSpec, level: Level,
                                 window: Window, cpu: CpuMeter | None) -> dict[str, Any]:
    """One level driven by `processes` client processes; the report is as if one client ran it."""
    start = time.perf_counter() + START_SLACK_S + window.warmup_s
    measured = (start, start + window.duration_s)
    loop = asyncio.get_running_loop()
    shares = [_share(level, processes, i) for i in range(processes)]
    runs = [loop.run_in_executor(pool, _drive, spec, share, measured, window) for share in shares if share.concurrency]
    cpu_s = await measure_cpu(cpu, measured)
    records = [record for part in await asyncio.gather(*runs) for record in part]
    return summarize(records, level, measured, cpu_s)


def _share(level: Level, processes: int, index: int) -> Level:
    """Process `index`'s part of the level: concurrency split as evenly as it goes, rate split evenly."""
    concurrency = level.concurrency // processes + (1 if index < level.concurrency % processes else 0)
    return Level(concurrency, None if level.rate is None else level.rate / processes)


def _init(spec: ClientSpec) -> None:
    global _workload
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    _workload = Workload(tokenizer, spec.input_len, spec.output_len, spec.prompts_file, spec.seed + os.getpid())


def _ready(_: int) -> int:
    time.sleep(0.2)  # long enough that each call lands on a different process
    return os.getpid()


def _drive(spec: ClientSpec, level: Level, measured: tuple[float, float], window: Window) -> list[RequestRecord]:
    return asyncio.run(_drive_async(spec, level, measured, window))


async def _drive_async(spec: ClientSpec, level: Level, measured: tuple[float, float],
                       window: Window) -> list[RequestRecord]:
    assert _workload is not None
    channels = [grpc.aio.insecure_channel(address) for address in spec.addresses]
    try:
        return await drive(GrpcTarget(channels, spec.timeout), _workload, level, measured, window)
    finally:
        for channel in channels:
            await channel.close(None)
