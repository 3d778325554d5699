"""Scale-out on loopback: 2 tokenizer and 3 generator processes (benchmark engine), load spread, a killed
generator, a generator with another tokenizer."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from transformers import AutoTokenizer

from splitserve import probe
from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.local_stack import (
    Process,
    StackPlan,
    free_port,
    spawn_generator,
    spawn_stack,
    stop_processes,
    wait_serving,
)
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.generator_pool import PoolTiming
from splitserve.tokenizer.routing import ReplicaState
from splitserve.tokenizer.server import start_tokenizer

from .test_generation import greedy

BENCH = ("--engine", "bench", "--max-batch-size", "32")


@dataclass
class Replicas:
    """The running processes and stubs for each tokenizer's public API."""

    plan: StackPlan
    generators: list[Process]
    tokenizers: list[Process]
    stubs: list[text_pb2_grpc.TextGenerationServiceStub]
    model_dir: Path

    def restart_generator(self, index: int) -> None:
        self.generators[index] = spawn_generator(self.plan.generators[index], self.plan.generator_metrics[index],
                                                 str(self.model_dir), DEFAULT_MODEL_NAME, BENCH)


def requests_served(metrics_port: int) -> float:
    """The generator's finished-request counter, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("splitserve_requests_total"))


def counts(replicas: Replicas) -> list[float]:
    return [requests_served(port) for port in replicas.plan.generator_metrics]


@pytest.fixture(scope="module")
def processes(model_dir: Path) -> Iterator[Replicas]:
    plan = StackPlan([f"127.0.0.1:{free_port()}" for _ in range(2)], [f"127.0.0.1:{free_port()}" for _ in range(3)],
                     [free_port() for _ in range(2)], [free_port() for _ in range(3)])
    generators, tokenizers = spawn_stack(plan, str(model_dir), DEFAULT_MODEL_NAME, "bench", BENCH[2:])
    replicas = Replicas(plan, generators, tokenizers, [], model_dir)
    try:
        for address in [*plan.generators, *plan.tokenizers]:
            wait_serving(address, [*tokenizers, *generators], 180)
        time.sleep(3 * PoolTiming().probe_interval_s)  # a tokenizer serves once one generator is accepted: wait for all
        yield replicas
    finally:
        stop_processes([*replicas.tokenizers, *replicas.generators])


@pytest.fixture
async def stack(processes: Replicas) -> AsyncIterator[Replicas]:
    channels = [grpc.aio.insecure_channel(address) for address in processes.plan.tokenizers]
    processes.stubs = [text_pb2_grpc.TextGenerationServiceStub(channel) for channel in channels]
    yield processes
    for channel in channels:
        await channel.close()


async def finish(stub: text_pb2_grpc.TextGenerationServiceStub, request: pb.GenerateStreamRequest) -> int:
    """Runs one stream to its end; returns its completion tokens."""
    last = None
    async for message in stub.GenerateStream(request, timeout=60):
        last = message
    assert last is not None
    return int(last.usage.completion_tokens)


async def uniform_load(replicas: Replicas, total: int, concurrency: int) -> None:
    """`total` short requests, `concurrency` at a time, alternating between the tokenizers."""
    queue = iter(range(total))

    async def worker(index: int) -> None:
        stub = replicas.stubs[index % len(replicas.stubs)]
        for _ in queue:
            assert await finish(stub, greedy("Tell me about load balancing.", 24, ignore_eos=True)) == 24

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


@pytest.mark.slow
async def test_uniform_load_spreads_across_generators(stack: Replicas) -> None:
    before = counts(stack)
    await uniform_load(stack, total=90, concurrency=12)
    served = [after - b for after, b in zip(counts(stack), before, strict=True)]
    assert sum(served) == 90
    share = 90 / 3
    assert all(0 < n <= 2 * share for n in served), served


@pytest.mark.slow
async def test_the_exec_probe_reports_health(stack: Replicas) -> None:
    assert await asyncio.to_thread(probe.main, [stack.plan.tokenizers[0]]) == 0
    assert await asyncio.to_thread(probe.main, [stack.plan.generators[1]]) == 0
    assert await asyncio.to_thread(probe.main, [f"127.0.0.1:{free_port()}", "--timeout", "0.5"]) == 1


async def stream_until_end(call: grpc.aio.UnaryStreamCall) -> tuple[grpc.StatusCode, float]:
    """Reads a started stream to its end: its final status and when it ended (monotonic)."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
        return grpc.StatusCode.OK, time.monotonic()
    except grpc.aio.AioRpcError as error:
        return error.code(), time.monotonic()


@pytest.mark.slow
async def test_killed_generator_fails_its_streams_fast_and_traffic_continues(stack: Replicas) -> None:
    calls = [stack.stubs[i % 2].GenerateStream(greedy("Keep talking:", 1000, ignore_eos=True), timeout=60)
             for i in range(12)]
    for call in calls:
        assert (await call.read()).text is not None  # every stream is producing tokens
    victim = stack.generators[0]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    ends = await asyncio.gather(*(stream_until_end(call) for call in calls))
    victim.wait(timeout=10)
    failed = [(code, at - killed_at) for code, at in ends if code != grpc.StatusCode.OK]
    assert failed, "the load spread should have put some streams on the killed generator"
    assert all(code == grpc.StatusCode.UNAVAILABLE and after < 2.0 for code, after in failed), failed
    assert len(failed) < len(calls)  # the streams on the other generators finished

    await uniform_load(stack, total=12, concurrency=6)  # traffic continues on the others

    stack.restart_generator(0)
    await asyncio.to_thread(wait_serving, stack.plan.generators[0], [stack.generators[0]], 120)
    for _ in range(40):  # the tokenizers reconnect by themselves and route to it again
        await uniform_load(stack, total=6, concurrency=6)
        if requests_served(stack.plan.generator_metrics[0]) > 0:
            break
        await asyncio.sleep(0.25)
    assert requests_served(stack.plan.generator_metrics[0]) > 0


def other_tokenizer_model(model_dir: Path, target: Path) -> Path:
    """The default model's config with a tokenizer that has one extra token: another fingerprint."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens(["<not-in-the-tokenizer-tier>"])
    tokenizer.save_pretrained(target)
    shutil.copy(model_dir / "config.json", target / "config.json")
    return target


@pytest.mark.slow
async def test_generator_with_another_tokenizer_is_refused(stack: Replicas, tmp_path: Path) -> None:
    bad_address = f"127.0.0.1:{free_port()}"
    bad = spawn_generator(bad_address, free_port(), str(other_tokenizer_model(stack.model_dir, tmp_path / "m")),
                          DEFAULT_MODEL_NAME, BENCH)
    try:
        await asyncio.to_thread(wait_serving, bad_address, [bad], 120)
        good = stack.plan.generators[1]
        server = await start_tokenizer(TokenizerConfig(
            str(stack.model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", generator_address=f"{good},{bad_address}",
            generator_wait_seconds=60, grace_seconds=1))
        try:
            for _ in range(50):  # both replicas probed
                states = {r.load.address: r.load.state for r in server.generator.default.replicas()}
                if ReplicaState.CONNECTING not in states.values():
                    break
                await asyncio.sleep(0.1)
            assert states == {good: ReplicaState.ACCEPTED, bad_address: ReplicaState.REFUSED}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = text_pb2_grpc.TextGenerationServiceStub(channel)
                assert [await finish(stub, greedy("Hi", 4, ignore_eos=True)) for _ in range(4)] == [4] * 4
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await finish(stub, pb.GenerateStreamRequest(prompt="Hi", model="no-such-model"))
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await server.stop(0)
    finally:
        stop_processes([bad])
