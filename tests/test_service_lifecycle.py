"""Start-up checks, health, reflection (grpcurl), engine supervision and graceful stop."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoTokenizer

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.local_stack import free_port, stop_processes, wait_serving
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import TokenizerMismatch, start_tokenizer

from .conftest import Stack
from .test_generation import PARIS, collect, greedy

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> str:
    result = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_grpcurl_lists_describes_and_calls_both_tiers(stack: Stack) -> None:
    public, internal = stack.public_address, stack.generator_address
    services = await asyncio.to_thread(grpcurl, public, "list")
    assert "splitserve.api.text.v1.TextGenerationService" in services and "grpc.health.v1.Health" in services
    assert "splitserve.api.tokens.v1.TokenGenerationService" in await asyncio.to_thread(grpcurl, internal, "list")
    described = await asyncio.to_thread(grpcurl, public, "describe", "splitserve.api.text.v1.GenerateStreamRequest")
    assert "optional float temperature" in described or "SamplingParams sampling" in described
    body = json.dumps({"prompt": PARIS, "stopping": {"max_new_tokens": 6}})
    out = await asyncio.to_thread(grpcurl, "-d", body, public, "splitserve.api.text.v1.TextGenerationService/"
                                  "GenerateStream")
    messages = [json.loads(m) for m in out.replace("}\n{", "}\x00{").split("\x00")]
    assert "".join(m.get("text", "") for m in messages).startswith(" Paris")
    assert messages[-1]["finish_reason"] == "FINISH_REASON_LENGTH"
    load = json.loads(await asyncio.to_thread(grpcurl, internal, "splitserve.api.tokens.v1.TokenGenerationService/"
                                              "GetLoad"))
    assert load.get("max_batch_size") == 8


async def test_tokenizer_refuses_a_generator_with_another_tokenizer(stack: Stack, model_dir: Path,
                                                                   tmp_path: Path) -> None:
    other = AutoTokenizer.from_pretrained(model_dir)
    other.add_tokens(["<not-in-the-generator>"])
    other.save_pretrained(tmp_path)
    config = TokenizerConfig(str(tmp_path), DEFAULT_MODEL_NAME, address="127.0.0.1:0",
                             generator_address=stack.generator_address, generator_wait_seconds=10)
    with pytest.raises(TokenizerMismatch, match="different tokenizer"):
        await start_tokenizer(config)


async def test_health_is_not_serving_until_the_generator_answers(model_dir: Path) -> None:
    config = TokenizerConfig(str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0",
                             generator_address="127.0.0.1:1", generator_wait_seconds=30)
    starting = asyncio.create_task(start_tokenizer(config))
    await asyncio.sleep(3)  # bound, tokenizer loaded, still waiting for the (absent) generator
    assert not starting.done()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting


async def check_health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return int(reply.status)


async def test_engine_crash_fails_in_flight_as_unavailable_and_restarts(stack: Stack) -> None:
    engine = stack.generator.engine
    assert isinstance(engine, NativeEngine)
    runner = engine._loop_thread._runner  # type: ignore[union-attr]
    call = stack.text.GenerateStream(greedy("Count slowly:", 200, ignore_eos=True))
    await call.read()  # generating

    def crash_once(*args: object, **kwargs: object) -> None:
        del runner.launch  # back to the real method for the steps after the fault
        raise RuntimeError("injected device fault")

    runner.launch = crash_once
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    for _ in range(100):
        if engine.restarts and await check_health(stack.generator_address) == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.1)
    assert engine.restarts == 1
    for _ in range(50):  # the tokenizer tier's pool re-admits the generator at its next health probe
        try:
            assert (await collect(stack, greedy(PARIS, 4)))[-1].usage.completion_tokens == 4
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
    pytest.fail("the tokenizer tier did not route to the restarted generator within 5 s")



def spawn(tier: str, model_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "splitserve", tier, "--model", str(model_dir),
                             "--model-name", DEFAULT_MODEL_NAME, "--log-level", "WARNING", *args])


@pytest.mark.slow
async def test_sigterm_drains_in_flight_streams_then_exits(model_dir: Path) -> None:

    gen_port, tok_port = free_port(), free_port()
    generator = spawn("generator", model_dir, "--address", f"127.0.0.1:{gen_port}")
    tokenizer = spawn("tokenizer", model_dir, "--address", f"127.0.0.1:{tok_port}",
                      "--generator", f"127.0.0.1:{gen_port}", "--grace-seconds", "30")
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{tok_port}", [generator, tokenizer], 120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tok_port}") as channel:
            from splitserve.api.text.v1 import text_pb2_grpc

            stub = text_pb2_grpc.TextGenerationServiceStub(channel)
            call = stub.GenerateStream(greedy("Tell me a story:", 40, ignore_eos=True))
            first = await call.read()
            tokenizer.terminate()  # SIGTERM mid-stream
            last = first
            while (message := await call.read()) is not grpc.aio.EOF:
                last = message
            assert last.usage.completion_tokens == 40
            assert await asyncio.to_thread(tokenizer.wait, 30) == 0
    finally:
        await asyncio.to_thread(stop_processes, [tokenizer, generator], 20)
    assert generator.returncode == 0


async def test_public_errors_name_the_unknown_model_for_every_rpc(stack: Stack) -> None:
    for call in (stack.text.Tokenize(pb.TokenizeRequest(model="nope", text="x")),
                 stack.text.GetModelInfo(pb.GetModelInfoRequest(model="nope"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
