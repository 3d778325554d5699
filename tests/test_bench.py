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
