"""`splitserve bench`: arguments, orchestration of the load levels, and the printed/JSON/PNG report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from splitserve.bench.cpu import CpuMeter
from splitserve.bench.hops import format_hops, hop_table
from splitserve.bench.loadgen import Level, Window, run_level
from splitserve.bench.report import format_level, ratios
from splitserve.bench.span_sink import SpanSink
from splitserve.bench.targets import EngineTarget, GrpcTarget, Target
from splitserve.bench.workload import LengthSpec, Workload
from splitserve.common.model_store import DEFAULT_MODEL, default_cache_dir, resolve_model


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the bench's flags (it resolves --model itself; add no model flags beside these)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder (prompts, and the stack it starts)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the default model is cached")
    target = parser.add_argument_group("target (default: start both tiers with --engine)")
    target.add_argument("--api", default="grpc", choices=["grpc", "openai"],
                        help="the public API to drive: gRPC GenerateStream, or the OpenAI-compatible HTTP API "
                             "(streamed /v1/completions); the report is the same")
    target.add_argument("--address", default=None,
                        help="bench a running public API instead of starting one (comma list: round-robin; "
                             "with --api openai, HTTP host:port)")
    target.add_argument("--tokenizer-pid", type=_pids, default=[], help="with --address: CPU accounting "
                        "(comma list: the tier's processes)")
    target.add_argument("--generator-pid", type=int, default=None, help="with --address: CPU accounting")
    target.add_argument("--in-process", action="store_true", help="the engine alone in this process, no gRPC")
    target.add_argument("--compare-in-process", action="store_true",
                        help="run the engine in-process first, then the stack, and report their ratio")
    target.add_argument("--engine", default="bench", help="engine of the stack this bench starts")
    target.add_argument("--max-batch-size", type=int, default=256, help="generator --max-batch-size")
    target.add_argument("--generator-arg", action="append", default=[],
                        help="extra generator flag, e.g. --generator-arg=--device=cuda (repeatable)")
    target.add_argument("--tokenizers", type=int, default=1,
                        help="tokenizer processes of the stack this bench starts (the tier scaled out)")
    target.add_argument("--tokenizer-arg", action="append", default=[],
                        help="extra tokenizer flag of the stack this bench starts, e.g. "
                             "--tokenizer-arg=--stream-interval-ms=20 (repeatable)")
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", default="1,16,64,256", help="comma list of concurrent streams")
    load.add_argument("--request-rate", default=None,
                      help="comma list of Poisson request rates (req/s); concurrency then caps in-flight")
    load.add_argument("--input-len", type=LengthSpec.parse, default=LengthSpec(128, 128), help="N or LOW:HIGH")
    load.add_argument("--output-len", type=LengthSpec.parse, default=LengthSpec(128, 128), help="N or LOW:HIGH")
    load.add_argument("--prompts-file", type=Path, default=None, help="one prompt per line (overrides --input-len)")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring, per level")
    load.add_argument("--duration", type=float, default=10.0, help="seconds measured per level")
    load.add_argument("--stagger", type=float, default=0.0,
                      help="seconds over which a level's streams start (closed loop): without it, streams of "
                           "equal length run in lockstep waves on the engine in-process; keep it under --warmup")
    load.add_argument("--drain", type=float, default=60.0,
                      help="seconds the requests in flight at a window's end may take to finish (their tokens "
                           "inside the window count toward throughput)")
    load.add_argument("--timeout", type=float, default=600.0, help="per-request deadline, seconds")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--client-processes", type=int, default=1,
                      help="load generator processes sharing each level (one Python client tops out first)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, help="write the full report here")
    out.add_argument("--plot", type=Path, default=None, help="write a latency-vs-throughput PNG here")
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--hops", action="store_true",
                     help="the stack this bench starts exports its spans to the bench, which prints where each "
                          "level's time to first token goes, hop by hop (adds the cost of exporting spans)")


def run_bench(args: argparse.Namespace) -> int:
    """Runs the bench; returns 1 if any level completed no request or saw errors, else 0."""
    model_path, _ = resolve_model(args.model, args.cache_dir or default_cache_dir())
    report = asyncio.run(_bench(args, str(model_path)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.plot is not None:
        from splitserve.bench.plot import plot_levels

        series = {k: report[k] for k in ("stack", "in_process") if report.get(k)}
        plot_levels(series, args.plot, f"{args.engine} engine, ISL {args.input_len.high} / OSL {args.output_len.high}")
    levels = [lv for k in ("stack", "in_process") for lv in report.get(k) or []]
    return 0 if levels and all(lv["completed"] > 0 and not lv["errors"] for lv in levels) else 1


def _levels(args: argparse.Namespace) -> list[Level]:
    concurrencies = [int(c) for c in str(args.concurrency).split(",")]
    if args.request_rate:
        return [Level(max(concurrencies), float(r)) for r in str(args.request_rate).split(",")]
    return [Level(c) for c in concurrencies]


async def _bench(args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
    workload = Workload(tokenizer, args.input_len, args.output_len, args.prompts_file, args.seed)
    report: dict[str, Any] = {"machine": _machine(), "args": vars(args)}
    if args.in_process or args.compare_in_process:
        async with _engine_target(args, model_path) as target:
            report["in_process"] = await _run_levels(args, target, workload, {"in_process": os.getpid()})
    if not args.in_process:
        report["stack"] = await _stack_levels(args, model_path, workload)
    if report.get("in_process") and report.get("stack"):
        report["ratio"] = ratios(report["in_process"], report["stack"])
        print("stack / in-process output tokens/s:", json.dumps(report["ratio"]))
    return report


async def _stack_levels(args: argparse.Namespace, model_path: str, workload: Workload) -> list[dict[str, Any]]:
    if args.address is not None:
        pids: dict[str, int | list[int]] = {"tokenizer": args.tokenizer_pid}
        if args.generator_pid:
            pids["generator"] = args.generator_pid
        return await _api_levels(args, args.address.split(","), workload, {k: v for k, v in pids.items() if v},
                                 model_path)
    from splitserve.bench.stack import started_stack

    generator_args = ["--engine", args.engine, "--max-batch-size", str(args.max_batch_size),
                      "--max-queued-requests", str(4 * max(args.max_batch_size, _max_in_flight(args))),
                      *args.generator_arg]
    with contextlib.ExitStack() as resources:
        sink = resources.enter_context(SpanSink()) if args.hops else None
        export, env = _span_export(sink)
        stack = resources.enter_context(started_stack(model_path, [*generator_args, *export],
                                                      [*args.tokenizer_arg, *export], args.tokenizers,
                                                      http=args.api == "openai", env=env))
        addresses = stack.http_addresses if args.api == "openai" else stack.addresses
        return await _api_levels(args, addresses, workload,
                                  {"tokenizer": stack.tokenizer_pids, "generator": stack.generator_pid,
                                   "client": os.getpid()},  # the load generator: is it the limit?
                                  model_path, sink)


def _span_export(sink: SpanSink | None) -> tuple[list[str], dict[str, str] | None]:
    """Both tiers' flags and environment to export to the sink, in small batches (a level's spans arrive
    before the next level starts)."""
    if sink is None:
        return [], None
    return ["--otlp-endpoint", sink.endpoint, "--otlp-protocol", "http/protobuf"], {"OTEL_BSP_SCHEDULE_DELAY": "100"}


async def _report_hops(result: dict[str, Any], sink: SpanSink | None) -> None:
    if sink is None:
        return
    await asyncio.sleep(1.0)  # the level's last spans are exported within 0.1 s of ending
    result["hops"] = hop_table(sink.take(), result["ttft_ms"]["p50"])
    print(format_hops(result["hops"]), flush=True)


async def _api_levels(args: argparse.Namespace, addresses: list[str], workload: Workload,
                      pids: dict[str, int | list[int]], model_path: str,
                      sink: SpanSink | None = None) -> list[dict[str, Any]]:
    if args.api == "openai":
        return await _openai_levels(args, addresses, workload, pids, sink)
    if args.client_processes > 1:
        return await _levels_from_processes(args, addresses, pids, model_path, sink)
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    try:
        return await _run_levels(args, GrpcTarget(channels, args.timeout), workload, pids, sink)
    finally:
        for channel in channels:
            await channel.close(None)


async def _openai_levels(args: argparse.Namespace, addresses: list[str], workload: Workload,
                         pids: dict[str, int | list[int]], sink: SpanSink | None) -> list[dict[str, Any]]:
    import httpx

    from splitserve.bench.openai_target import OpenAITarget, served_model

    if args.client_processes > 1:
        raise SystemExit("splitserve bench: --client-processes > 1 drives the gRPC API only")
    urls = [a if a.startswith(("http://", "https://")) else f"http://{a}" for a in addresses]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)  # one connection per stream
    async with httpx.AsyncClient(limits=limits) as client:
        target = OpenAITarget(client, urls, await served_model(client, urls[0]), args.timeout)
        return await _run_levels(args, target, workload, pids, sink)


async def _levels_from_processes(args: argparse.Namespace, addresses: list[str], pids: dict[str, int | list[int]],
                                 model_path: str, sink: SpanSink | None) -> list[dict[str, Any]]:
    from splitserve.bench.client_pool import ClientSpec, client_pool, run_level_in_processes

    spec = ClientSpec(addresses, args.timeout, model_path, args.input_len, args.output_len,
                      args.prompts_file, args.seed)
    cpu, window, results = CpuMeter(pids), Window(args.warmup, args.duration, args.drain, args.stagger), []
    with await asyncio.to_thread(client_pool, spec, args.client_processes) as pool:
        for level in _levels(args):
            results.append(await run_level_in_processes(pool, args.client_processes, spec, level, window, cpu))
            print(format_level(results[-1], f"stack, {args.client_processes} client processes"), flush=True)
            await _report_hops(results[-1], sink)
    return results


@contextlib.asynccontextmanager
async def _engine_target(args: argparse.Namespace, model_path: str) -> AsyncIterator[EngineTarget]:
    """The engine the stack would run, built from the same generator flags, in this process."""
    from splitserve.generator import config as generator_config
    from splitserve.generator.engine import create_engine

    parser = argparse.ArgumentParser(prog="generator")
    generator_config.add_arguments(parser)
    flags = parser.parse_args(["--engine", args.engine, "--max-batch-size", str(args.max_batch_size),
                               "--max-queued-requests", str(4 * max(args.max_batch_size, _max_in_flight(args))),
                               *args.generator_arg, "--no-engine-process"])  # in this process, always
    engine = create_engine(generator_config.from_args(flags, model_path, Path(model_path).name), lambda _: None)
    await engine.start()
    try:
        yield EngineTarget(engine)
    finally:
        await engine.stop()


async def _run_levels(args: argparse.Namespace, target: Target, workload: Workload,
                      pids: dict[str, int | list[int]], sink: SpanSink | None = None) -> list[dict[str, Any]]:
    cpu = CpuMeter(pids) if pids else None
    window = Window(args.warmup, args.duration, args.drain, args.stagger)
    results = []
    for level in _levels(args):
        with _progress(args, level) as bar:
            result = await run_level(target, workload, level, window, cpu, bar)
        results.append(result)
        print(format_level(result, "in-process" if "in_process" in pids else "stack"), flush=True)
        await _report_hops(result, sink)
    return results


@contextlib.contextmanager
def _progress(args: argparse.Namespace, level: Level) -> Any:
    if args.no_progress:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=level.label, unit="req", leave=False) as bar:
        yield bar


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def _max_in_flight(args: argparse.Namespace) -> int:
    return max(int(c) for c in str(args.concurrency).split(","))


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor()}
