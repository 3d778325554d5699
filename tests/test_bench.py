"""`splitserve bench` against both tiers on the benchmark engine: the report is complete and sane."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from splitserve.bench import add_bench_arguments, run_bench
from splitserve.bench.cpu import CpuMeter
from splitserve.bench.loadgen import Level, Window, drive, run_level
from splitserve.bench.records import RequestRecord
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.engines.bench_engine import BenchEngine, StepModel
from splitserve.link.types import GenerationRequest


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["--no-progress", "--warmup", "0.5", "--duration", "2", "--input-len", "32",
                              "--output-len", "8:16", "--max-batch-size", "16", *argv])


def test_bench_reports_throughput_latency_and_cpu_per_tier(tmp_path: Path, model_dir: Path) -> None:
    args = bench_args("--model", str(model_dir), "--concurrency", "2,8", "--compare-in-process",
                      "--json", str(tmp_path / "report.json"), "--plot", str(tmp_path / "plot.png"))
    assert run_bench(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [lv["concurrency"] for lv in report["stack"]] == [2, 8]
    for level in report["stack"]:
        assert level["completed"] > 0 and level["errors"] == {}
        assert level["output_tokens_per_s"] > 0 and level["requests_per_s"] > 0
        assert 8 <= level["output_tokens"] / level["completed"] <= 16
        assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p99"] <= level["e2e_ms"]["p99"]
        assert level["itl_ms"]["p50"] > 0
        for tier in ("tokenizer", "generator"):
            assert level["cpu"][tier]["cpu_s"] > 0 and level["cpu"][tier]["us_per_output_token"] > 0
    assert set(report["ratio"]) == {"concurrency=2", "concurrency=8"}
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_bench_drives_the_openai_api_with_the_same_report(tmp_path: Path, model_dir: Path) -> None:
    grpc_args = bench_args("--model", str(model_dir), "--concurrency", "2", "--json", str(tmp_path / "grpc.json"))
    http_args = bench_args("--model", str(model_dir), "--concurrency", "2", "--api", "openai",
                           "--json", str(tmp_path / "http.json"))
    assert run_bench(grpc_args) == 0 and run_bench(http_args) == 0
    grpc_level, http_level = (json.loads((tmp_path / f"{name}.json").read_text())["stack"][0]
                              for name in ("grpc", "http"))
    assert http_level.keys() == grpc_level.keys() and http_level["cpu"].keys() == grpc_level["cpu"].keys()
    assert http_level["completed"] > 0 and http_level["errors"] == {}
    assert 8 <= http_level["output_tokens"] / http_level["completed"] <= 16
    assert 0 < http_level["ttft_ms"]["p50"] <= http_level["e2e_ms"]["p99"]
    assert http_level["cpu"]["tokenizer"]["us_per_output_token"] > 0


def test_bench_request_rate_mode_in_process(model_dir: Path) -> None:
    args = bench_args("--model", str(model_dir), "--in-process", "--request-rate", "20", "--concurrency", "8")
    assert run_bench(args) == 0


def test_bench_from_two_client_processes_over_two_tokenizers_and_an_engine_process(
        model_dir: Path, tmp_path: Path) -> None:
    args = bench_args("--model", str(model_dir), "--concurrency", "8", "--tokenizers", "2", "--client-processes", "2",
                      "--generator-arg=--engine-process", "--json", str(tmp_path / "report.json"))
    assert run_bench(args) == 0
    (level,) = json.loads((tmp_path / "report.json").read_text())["stack"]
    assert level["completed"] > 0 and level["errors"] == {}
    assert 8 <= level["output_tokens"] / level["completed"] <= 16
    assert 0 < level["ttft_ms"]["p50"] <= level["e2e_ms"]["p99"]
    # The tokenizer tier is both processes, the generator tier includes its engine process, and the
    # load generator's own CPU (its client processes included) is reported beside them.
    assert set(level["cpu"]) == {"tokenizer", "generator", "client"}
    assert all(cost["cpu_s"] > 0 for cost in level["cpu"].values())


def test_tokens_between_spreads_a_stream_s_tokens_from_its_first_to_its_last() -> None:
    record = RequestRecord(start=0.5, first=1.0, end=2.0, output_tokens=11)
    assert record.tokens_between(0.0, 3.0) == 11
    assert record.tokens_between(1.5, 3.0) == 5  # half of the ten after the first
    assert record.tokens_between(0.0, 1.0) == 1  # only the first
    assert record.tokens_between(2.5, 3.0) == 0
    assert RequestRecord(start=0.5, first=1.0, end=2.0, output_tokens=11, error="INTERNAL").tokens_between(0, 3) == 0


class _Lockstep:
    """Every request streams `tokens` tokens over exactly `seconds`, as a batch that starts together does."""

    def __init__(self, tokens: int, seconds: float) -> None:
        self.tokens, self.seconds = tokens, seconds

    def next_item(self) -> None:
        return None

    async def send(self, item: None, record: RequestRecord) -> None:
        record.on_message()
        await asyncio.sleep(self.seconds)
        record.on_message()
        record.finish(self.tokens)


def test_throughput_of_lockstep_waves_counts_tokens_in_the_window_not_completed_requests() -> None:
    # Waves of 0.4 s in a 1 s window: by completed requests it would read 2 or 3 waves (20% low or high).
    fake = _Lockstep(tokens=30, seconds=0.4)
    level = asyncio.run(run_level(fake, fake, Level(4), Window(0.1, 1.0, drain_s=5.0), None))  # type: ignore[arg-type]
    assert level["completed"] in (8, 12)
    assert abs(level["output_tokens_per_s"] - 4 * 30 / 0.4) / (4 * 30 / 0.4) < 0.08
    assert level["unfinished"] == 0  # the wave in flight at the window's end was let finish


def test_cpu_of_a_watched_child_process_does_not_count_toward_its_parent() -> None:
    # The bench starts both tiers as its children; its own "client" CPU must not include theirs.
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        meter = CpuMeter({"client": os.getpid(), "tier": busy.pid})
        time.sleep(0.3)
        before = meter.sample()
        time.sleep(1.0)
        spent = CpuMeter.spent(before, meter.sample())
    finally:
        busy.kill()
        busy.wait()
    assert spent["tier"] > 0.3 and spent["client"] < 0.1  # the parent only sleeps


def test_stagger_spreads_the_first_requests_of_a_closed_loop_level() -> None:
    fake = _Lockstep(tokens=30, seconds=0.4)
    measured = (time.perf_counter() + 0.5, time.perf_counter() + 1.0)
    window = Window(0.5, 0.5, drain_s=5.0, stagger_s=0.4)
    records = asyncio.run(drive(fake, fake, Level(4), measured, window))  # type: ignore[arg-type]
    first = sorted(r.start for r in records)[:4]
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert all(0.07 < gap < 0.2 for gap in gaps), gaps  # 0.1 s apart: 0.4 s over 4 streams


async def _started_bench_engine(model_dir: Path, step: StepModel) -> BenchEngine:
    config = GeneratorConfig(str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", engine="bench")
    engine = BenchEngine(config, lambda healthy: None, step)
    await engine.start()
    return engine


async def test_bench_engine_keeps_its_clock_when_the_event_loop_is_late(model_dir: Path) -> None:
    """A device does not wait for the host: a loop blocked for ten steps delays delivery, not the rate."""
    engine = await _started_bench_engine(model_dir, StepModel(fixed_s=0.01, per_seq_s=0.0))
    try:
        started = time.perf_counter()
        received = 0
        async for chunk in engine.generate(GenerationRequest("r", [5, 6, 7], max_new_tokens=20)):
            received += len(chunk.tokens)
            if received == 3:
                time.sleep(0.1)  # the loop is held: ten steps' worth
        elapsed = time.perf_counter() - started
    finally:
        await engine.stop()
    assert received == 20
    assert elapsed < 0.2 + 0.06, f"20 steps of 10 ms took {elapsed * 1000:.0f} ms: the block was added on top"


async def test_bench_engine_request_joins_only_steps_that_start_after_it_arrived(model_dir: Path) -> None:
    engine = await _started_bench_engine(model_dir, StepModel(fixed_s=0.01, per_seq_s=0.0))
    try:
        first = engine.generate(GenerationRequest("a", [5], max_new_tokens=30))
        await anext(first)
        time.sleep(0.1)  # the loop is late by ten steps when the second request arrives
        arrived = engine.steps
        second = engine.generate(GenerationRequest("b", [6], max_new_tokens=1))
        [chunk] = [c async for c in second]
        assert chunk.finish_reason is not None
        await first.aclose()
    finally:
        await engine.stop()
    # About ten catch-up steps ran without it (they started before it arrived), then its own step;
    # joining the first catch-up step would have finished it after one.
    assert engine.steps - arrived >= 8
