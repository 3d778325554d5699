"""SIGTERM drains each tier: NOT_SERVING, new calls refused, in-flight streams finish, then exit 0."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.api.tokens.v1 import tokens_pb2_grpc

from .test_generation import greedy
from .test_service_lifecycle import spawn

TOKENS = 600  # ~2.4 s at the bench engine's modelled 4 ms step: SIGTERM lands mid-stream


async def refused(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:
    """The status of a call expected to fail before its first message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    return caught.value.code()


async def read_rest(call: grpc.aio.UnaryStreamCall) -> Any:
    """The last message of a call already read with read()."""
    last = None
    while (message := await call.read()) is not grpc.aio.EOF:
        last = message
    return last


async def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        await asyncio.to_thread(process.wait, 20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.slow
async def test_sigterm_drains_each_tier_and_refuses_new_calls(model_dir: Path) -> None:
    from splitserve.local_stack import free_port, wait_serving

    gen_port, tok_port = free_port(), free_port()
    generator = spawn("generator", model_dir, "--engine", "bench", "--address", f"127.0.0.1:{gen_port}",
                      "--grace-seconds", "30", "--metrics-port", "0")
    tokenizer = spawn("tokenizer", model_dir, "--address", f"127.0.0.1:{tok_port}", "--generator",
                      f"127.0.0.1:{gen_port}", "--grace-seconds", "30", "--metrics-port", "0")
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{tok_port}", [generator, tokenizer], 120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tok_port}") as channel:
            stub = text_pb2_grpc.TextGenerationServiceStub(channel)
            call = stub.GenerateStream(greedy("Tell me a story:", TOKENS, ignore_eos=True))
            await call.read()
            tokenizer.terminate()
            await asyncio.sleep(0.3)
            assert await refused(stub.GenerateStream(greedy("Hi", 4))) == grpc.StatusCode.UNAVAILABLE
            assert (await read_rest(call)).usage.completion_tokens == TOKENS
            assert await asyncio.to_thread(tokenizer.wait, 30) == 0

        async with grpc.aio.insecure_channel(f"127.0.0.1:{gen_port}") as channel:
            tokens = tokens_pb2_grpc.TokenGenerationServiceStub(channel)
            request = tpb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=TOKENS, ignore_eos=True)
            stream = tokens.Generate(request)
            await stream.read()
            generator.terminate()
            await asyncio.sleep(0.3)
            assert await refused(tokens.Generate(request)) == grpc.StatusCode.UNAVAILABLE
            assert (await read_rest(stream)).completion_tokens == TOKENS
            assert await asyncio.to_thread(generator.wait, 30) == 0
    finally:
        for process in (tokenizer, generator):
            await stop(process)
