"""CPU time per request of each tier with tracing off and on (a measurement, not a test).

    .venv/bin/python -m tests.tracing_cpu [--requests 160] [--concurrency 16] [--output-len 128]

Both tiers run as processes over the bench engine (no model compute, so the serving layer's cost
shows); "on" exports every span over OTLP/gRPC to a real collector (rotel, discarding what it gets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import rotel

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.bench.cpu import CpuMeter
from splitserve.bench.stack import started_stack
from splitserve.common.model_store import default_cache_dir, ensure_default_model
from splitserve.local_stack import free_port

PROMPT = "Tell me a long story about a lighthouse keeper and the sea. " * 10  # ~130 tokens



@contextlib.contextmanager
def collector() -> Iterator[str]:
    """rotel receiving OTLP/gRPC and dropping it (blackhole exporter); yields its endpoint."""
    port, http_port = free_port(), free_port()
    agent = subprocess.Popen([str(Path(rotel.__file__).parent / "rotel-agent"), "start", "--exporter", "blackhole",
                              "--otlp-grpc-endpoint", f"127.0.0.1:{port}",
                              "--otlp-http-endpoint", f"127.0.0.1:{http_port}"])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        agent.terminate()
        agent.wait(10)


async def load(address: str, requests: int, concurrency: int, output_len: int) -> None:
    """`requests` streamed greedy generations, `concurrency` at a time."""
    request = pb.GenerateStreamRequest(prompt=PROMPT, stopping=pb.StoppingCriteria(max_new_tokens=output_len,
                                                                                    ignore_eos=True))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = text_pb2_grpc.TextGenerationServiceStub(channel)
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                async for _ in stub.GenerateStream(request):
                    pass

        await asyncio.gather(*(one() for _ in range(requests)))


def measure(mode: str, model: str, args: argparse.Namespace) -> dict[str, float]:
    """Microseconds of CPU per request, by tier, after a warm-up round."""
    with started_stack(model, ["--engine", "bench", "--max-batch-size", "64"], []) as stack:
        asyncio.run(load(stack.address, args.concurrency, args.concurrency, args.output_len))
        meter = CpuMeter({"tokenizer": stack.tokenizer_pid, "generator": stack.generator_pid})
        before = meter.sample()
        asyncio.run(load(stack.address, args.requests, args.concurrency, args.output_len))
        spent = CpuMeter.spent(before, meter.sample())
    return {tier: seconds / args.requests * 1e6 for tier, seconds in spent.items()}


def run_mode(mode: str, model: str, args: argparse.Namespace) -> dict[str, float]:
    os.environ.pop("OTEL_SDK_DISABLED", None)
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if mode == "off":
        os.environ["OTEL_SDK_DISABLED"] = "true"  # the tiers read it at their entry point
        return measure(mode, model, args)
    with collector() as endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        return measure(mode, model, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="alternate off/on this many times")
    args = parser.parse_args()
    model = str(ensure_default_model(default_cache_dir()))
    for round_ in range(args.rounds):
        for mode in ("off", "on"):
            result = run_mode(mode, model, args)
            print(f"round {round_} tracing {mode:3}: " + ", ".join(f"{tier} {us:8.0f} µs CPU/request"
                                                                   for tier, us in result.items()), flush=True)


if __name__ == "__main__":
    main()
