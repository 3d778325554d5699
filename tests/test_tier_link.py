"""The tiers over a real link: the tokenizer tier with the generator package blocked, the `stream` transport,
a pool's name on unary replies, and a generator that dies (readiness, the error's text, `splitserve up`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve import probe
from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.local_stack import Process, free_port, spawn_generator, stop_processes, wait_serving
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import TokenizerServer, start_tokenizer

from .conftest import Stack
from .test_generation import greedy

BENCH = ("--engine", "bench", "--max-batch-size", "8")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

# Runs in a fresh interpreter: any import of splitserve.generator fails, then the tokenizer tier serves
# through both transports and prints what it answered.
BLOCKED_TOKENIZER = r'''
import asyncio, importlib.abc, json, sys


class NoGenerator(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "splitserve.generator" or name.startswith("splitserve.generator."):
            raise ImportError(f"the tokenizer tier imported {name}")
        return None


sys.meta_path.insert(0, NoGenerator())

import grpc
from splitserve import cli
from splitserve.api.text.v1 import text_pb2 as pb, text_pb2_grpc
from splitserve.tokenizer import config
from splitserve.tokenizer.server import start_tokenizer


async def main(model_dir, name, generator):
    results = {}
    for transport in ("many", "stream"):
        args = cli.build_parser("tokenizer").parse_args([  # the command line `splitserve tokenizer` parses
            "tokenizer", "--model", model_dir, "--address", "127.0.0.1:0", "--generator", generator,
            "--generator-transport", transport, "--grace-seconds", "0"])
        server = await start_tokenizer(config.from_args(args, model_dir, name))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = text_pb2_grpc.TextGenerationServiceStub(channel)
                fields = dict(prompt="The capital of France is", stopping=pb.StoppingCriteria(max_new_tokens=6))
                unary = await stub.Generate(pb.GenerateRequest(**fields), timeout=60)
                streamed = [m async for m in stub.GenerateStream(pb.GenerateStreamRequest(**fields), timeout=60)]
            results[transport] = [unary.text, "".join(m.text for m in streamed), unary.model]
        finally:
            await server.stop(0)
    results["imported"] = sorted(m for m in sys.modules if m.startswith("splitserve.generator"))
    print(json.dumps(results))


asyncio.run(main(*sys.argv[1:4]))
'''


async def test_the_tokenizer_tier_serves_with_the_generator_package_blocked(stack: Stack, model_dir: Path) -> None:
    command = [sys.executable, "-c", BLOCKED_TOKENIZER, str(model_dir), DEFAULT_MODEL_NAME,
               f"127.0.0.1:{stack.generator.port}"]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("imported") == []
    expected = (await stack.text.Generate(pb.GenerateRequest(prompt="The capital of France is",
                                                             stopping=pb.StoppingCriteria(max_new_tokens=6)))).text
    assert "Paris" in expected
    assert results == {transport: [expected, expected, DEFAULT_MODEL_NAME] for transport in ("many", "stream")}


@pytest.fixture(scope="module")
async def stream_transport(stack: Stack, model_dir: Path) -> AsyncIterator[text_pb2_grpc.TextGenerationServiceStub]:
    """A second tokenizer tier on the stack's generator: one Generate call per request, and a pool named "other"."""
    address = f"127.0.0.1:{stack.generator.port}"
    server = await start_tokenizer(TokenizerConfig(
        str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", generator_address=address,
        generator_transport="stream", generator_pools=(("other", address),), generator_wait_seconds=60,
        grace_seconds=0))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield text_pb2_grpc.TextGenerationServiceStub(channel)
    await server.stop(0)


async def test_the_stream_transport_streams_the_same_text_and_usage(
        stack: Stack, stream_transport: text_pb2_grpc.TextGenerationServiceStub) -> None:
    request = greedy("Write a list of fruits:", 24)
    ours = [m async for m in stream_transport.GenerateStream(request, timeout=60)]
    theirs = [m async for m in stack.text.GenerateStream(request, timeout=60)]
    assert "".join(m.text for m in ours) == "".join(m.text for m in theirs)
    assert [t.id for m in ours for t in m.tokens] == [t.id for m in theirs for t in m.tokens]
    assert ours[-1].usage == theirs[-1].usage and ours[-1].finish_reason == theirs[-1].finish_reason


async def test_the_stream_transport_passes_refusals_through_and_cancels(
        stack: Stack, stream_transport: text_pb2_grpc.TextGenerationServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream_transport.Generate(pb.GenerateRequest(prompt="Hi", stopping=pb.StoppingCriteria(
            max_new_tokens=100_000)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("max_new_tokens=100000 is over the limit")
    call = stream_transport.GenerateStream(greedy("Count to a thousand:", 200, ignore_eos=True), timeout=60)
    await call.read()
    call.cancel()
    async with asyncio.timeout(10):  # the generator request ended with the call
        while stack.generator.engine.load().running_requests:
            await asyncio.sleep(0.05)


async def test_unary_replies_name_the_pool_that_served_them(
        stream_transport: text_pb2_grpc.TextGenerationServiceStub) -> None:
    for model, named in (("other", "other"), ("", DEFAULT_MODEL_NAME)):
        reply = await stream_transport.Generate(pb.GenerateRequest(
            prompt="Hi", model=model, stopping=pb.StoppingCriteria(max_new_tokens=2)), timeout=30)
        assert reply.model == named


# -- a generator that dies ------------------------------------------------------------------------------


@pytest.fixture
def generator_process(model_dir: Path) -> Iterator[tuple[str, list[Process]]]:
    """A generator process (benchmark engine) on a free port; the list holds it and any restarted one."""
    address = f"127.0.0.1:{free_port()}"
    processes = [spawn_generator(address, free_port(), str(model_dir), DEFAULT_MODEL_NAME, BENCH)]
    try:
        wait_serving(address, processes, 180)
        yield address, processes
    finally:
        stop_processes(processes)


async def health_of(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return int(reply.status)


async def wait_health(port: int, status: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await health_of(port) != status:
            await asyncio.sleep(0.1)


async def test_a_dead_generator_makes_the_tokenizer_not_ready_and_its_error_is_named_once(
        generator_process: tuple[str, list[Process]], model_dir: Path) -> None:
    address, processes = generator_process
    server: TokenizerServer = await start_tokenizer(TokenizerConfig(
        str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", generator_address=address,
        generator_wait_seconds=60, grace_seconds=0))
    try:
        assert await health_of(server.port) == SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = text_pb2_grpc.TextGenerationServiceStub(channel).GenerateStream(
                greedy("Keep talking:", 1000, ignore_eos=True), timeout=60)
            await call.read()
            processes[0].send_signal(signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while await call.read() is not grpc.aio.EOF:
                    pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (ended.value.details() or "").count("generator tier") == 1, ended.value.details()

        await wait_health(server.port, NOT_SERVING, 10)  # not ready: no replica is usable
        tokenizer = f"127.0.0.1:{server.port}"
        assert await asyncio.to_thread(probe.main, [tokenizer]) == 1
        assert await asyncio.to_thread(probe.main, [tokenizer, "--live"]) == 0  # but alive

        processes.append(spawn_generator(address, free_port(), str(model_dir), DEFAULT_MODEL_NAME, BENCH))
        await wait_health(server.port, SERVING, 120)  # ready again once the replica is back
    finally:
        await server.stop(0)


UP = r'''
import sys
from splitserve import cli, local_stack

local_stack.METRICS_PORTS = {"tokenizer": int(sys.argv[1]), "generator": int(sys.argv[2])}
sys.exit(cli.main(["up", "--engine", "bench", "--model", sys.argv[3], "--address", sys.argv[4],
                   "--generator-address", sys.argv[5], "--http-address", sys.argv[6],
                   "--tokenizer-args", "--tool-call-parser hermes", "--generator-args", "--max-batch-size 3"]))
'''


@pytest.mark.slow
def test_up_stops_everything_and_exits_1_when_its_generator_dies(model_dir: Path) -> None:
    public, generator = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    up = subprocess.Popen([sys.executable, "-c", UP, str(free_port()), str(free_port()), str(model_dir), public,
                           generator, f"127.0.0.1:{free_port()}"],
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_serving(public, [up], 180)
        children = psutil.Process(up.pid).children()
        [victim] = [c for c in children if "generator" in c.cmdline()]
        [tokenizer] = [c for c in children if "tokenizer" in c.cmdline()]
        assert victim.cmdline()[-2:] == ["--max-batch-size", "3"]  # the extra flags reach their tier
        assert tokenizer.cmdline()[-2:] == ["--tool-call-parser", "hermes"]
        victim.send_signal(signal.SIGKILL)
        started = time.monotonic()
        assert up.wait(timeout=60) == 1
        assert time.monotonic() - started < 30
        assert "the generator" in (up.stderr.read() if up.stderr else "")
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=10)
