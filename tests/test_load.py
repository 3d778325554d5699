"""1,000 concurrent streams with random client cancellations against both tiers as processes (bench engine)."""

from __future__ import annotations

import asyncio
import gc
import random
import subprocess
import time
from pathlib import Path

import grpc
import psutil
import pytest

from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.local_stack import free_port, stop_processes, wait_serving

from .test_generation import greedy
from .test_service_lifecycle import spawn

STREAMS = 1000
CHANNELS = 10  # separate connections, as many clients would open
CANCEL_SHARE = 0.3
ROUND_TIMEOUT_S = 120.0


async def one_stream(stub: text_pb2_grpc.TextGenerationServiceStub, rng: random.Random) -> str:
    """'done', or 'cancelled' when this client gave up after a random number of messages."""
    call = stub.GenerateStream(greedy("Tell me a story:", rng.randint(16, 64), ignore_eos=True), timeout=60)
    give_up_after = rng.randint(0, 10) if rng.random() < CANCEL_SHARE else None
    seen = 0
    async for message in call:
        if give_up_after is not None and seen >= give_up_after:
            call.cancel()
            return "cancelled"
        seen += 1
        if message.finish_reason:
            return "done"
    raise AssertionError("stream ended without a finish reason")


async def load_round(address: str, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(CHANNELS)]
    try:
        stubs = [text_pb2_grpc.TextGenerationServiceStub(c) for c in channels]
        results = await asyncio.wait_for(asyncio.gather(
            *(one_stream(stubs[i % CHANNELS], rng) for i in range(STREAMS))), ROUND_TIMEOUT_S)
    finally:
        for channel in channels:
            await channel.close()
    return {outcome: results.count(outcome) for outcome in ("done", "cancelled")}


async def idle_load(address: str) -> tpb.GetLoadResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tokens_pb2_grpc.TokenGenerationServiceStub(channel)
        for _ in range(200):
            load = await stub.GetLoad(tpb.GetLoadRequest(), timeout=5)
            if load.running_requests == load.queued_requests == 0:
                return load
            await asyncio.sleep(0.05)
    raise AssertionError(f"generator still busy: {load}")


def rss_mib(process: subprocess.Popen[bytes]) -> float:
    return float(psutil.Process(process.pid).memory_info().rss) / 2**20


@pytest.mark.slow
async def test_thousand_concurrent_streams_with_cancellations(model_dir: Path) -> None:

    gen_port, tok_port = free_port(), free_port()
    generator = spawn("generator", model_dir, "--engine", "bench", "--address", f"127.0.0.1:{gen_port}",
                      "--max-batch-size", "256", "--max-queued-requests", "1024", "--metrics-port", "0")
    tokenizer = spawn("tokenizer", model_dir, "--address", f"127.0.0.1:{tok_port}", "--generator",
                      f"127.0.0.1:{gen_port}", "--max-inflight-requests", "1024", "--metrics-port", "0")
    processes = {"generator": generator, "tokenizer": tokenizer}
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{tok_port}", [generator, tokenizer], 120)
        cold = {name: rss_mib(p) for name, p in processes.items()}
        await load_round(f"127.0.0.1:{tok_port}", seed=1)  # warm-up: allocator pools, gRPC buffers
        await idle_load(f"127.0.0.1:{gen_port}")
        before = {name: rss_mib(p) for name, p in processes.items()}
        started = time.monotonic()
        outcomes = await load_round(f"127.0.0.1:{tok_port}", seed=2)
        seconds = time.monotonic() - started
        load = await idle_load(f"127.0.0.1:{gen_port}")
        gc.collect()
        await asyncio.sleep(2)
        after = {name: rss_mib(p) for name, p in processes.items()}
        print(f"\nload: {STREAMS} streams in {seconds:.1f}s: {outcomes}; generator running after: "
              f"{load.running_requests}; RSS MiB cold/before/after: "
              + ", ".join(f"{n} {cold[n]:.0f}/{before[n]:.0f}/{after[n]:.0f}" for n in processes))
        assert outcomes["done"] + outcomes["cancelled"] == STREAMS and outcomes["cancelled"] > 0
        assert load.running_requests == 0 and load.queued_requests == 0
        for name in processes:
            assert after[name] <= before[name] * 1.10, f"{name} RSS grew {before[name]:.0f} -> {after[name]:.0f} MiB"
    finally:
        await asyncio.to_thread(stop_processes, [tokenizer, generator], 20)
