"""`splitserve bench` against both tiers on the benchmark engine: the report is complete and sane."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from splitserve.bench import add_bench_arguments, run_bench


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
