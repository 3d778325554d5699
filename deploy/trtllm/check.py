"""Checks splitserve's TensorRT-LLM engines against the real package (run by validate.sh, in the container).

Builds an engine dir for the default model, then for the torch, trtllm and trtllm-engine engines
starts the generator and the tokenizer tier in-process and checks: greedy parity with torch,
streaming, cancellation (the slot is freed), limit errors, and text through both tiers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from splitserve.api.text.v1 import text_pb2, text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.model_store import default_cache_dir, ensure_default_model
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.engines.trtllm_build import add_build_engine_arguments, run_build_engine
from splitserve.generator.server import start_generator
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import start_tokenizer

PROMPTS = ["The capital of France is", "List three colors:", "def fibonacci(n):"]
MAX_NEW = 24
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def build_engine(model: Path, engine_dir: Path) -> None:
    if (engine_dir / "config.json").is_file():
        return
    parser = argparse.ArgumentParser()
    add_build_engine_arguments(parser)
    args = parser.parse_args(["--output-dir", str(engine_dir), "--max-batch-size", "8",
                              "--max-input-len", "512", "--max-seq-len", "1024", "--dtype", "bfloat16"])
    args.model_path = str(model)
    if run_build_engine(args) != 0:
        sys.exit("engine build failed")


async def generate(stub: Any, ids: list[int], **fields: Any) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(prompt_token_ids=ids, max_new_tokens=MAX_NEW, **fields)
    return [m async for m in stub.Generate(request)]


def token_ids(messages: list[pb.GenerateResponse]) -> list[int]:
    return [t.id for m in messages for t in m.tokens]


async def check_engine(engine: str, model: Path, engine_dir: Path, prompts: list[list[int]],
                       reference: dict[int, list[int]]) -> None:
    config = GeneratorConfig(str(model), "SmolLM2-135M-Instruct", address="127.0.0.1:0", engine=engine,
                             dtype="bfloat16", engine_dir=str(engine_dir), max_batch_size=8, max_input_tokens=512,
                             max_total_tokens=1024, kv_cache_free_gpu_memory_fraction=0.3)
    generator = await start_generator(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{generator.port}") as channel:
            stub = tokens_pb2_grpc.TokenGenerationServiceStub(channel)
            await check_tokens(engine, stub, prompts, reference)
            await check_cancel(engine, stub, generator.engine)
            await check_limits(engine, stub)
        await check_two_tiers(engine, model, generator.port)
    finally:
        await generator.stop(0)


async def check_tokens(engine: str, stub: Any, prompts: list[list[int]], reference: dict[int, list[int]]) -> None:
    results = await asyncio.gather(*(generate(stub, ids) for ids in prompts))  # concurrently: in-flight batching
    for index, messages in enumerate(results):
        got = token_ids(messages)
        if engine == "torch":
            reference[index] = got
        check(messages[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED, f"{engine}: prompt {index} finishes")
        check(len(messages) > 1, f"{engine}: prompt {index} streams ({len(messages)} messages)")
        same = got == reference[index]
        check(same or got[:8] == reference[index][:8], f"{engine}: greedy parity with torch on prompt {index}"
              + ("" if same else f" (first 8 equal; later bf16 drift: {got} vs {reference[index]})"))


async def check_cancel(engine: str, stub: Any, generator_engine: Any) -> None:
    call = stub.Generate(pb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=400, ignore_eos=True))
    await call.read()
    call.cancel()
    deadline = time.monotonic() + 2
    while generator_engine.load().running_requests and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    check(generator_engine.load().running_requests == 0, f"{engine}: cancelling frees the slot")


async def check_limits(engine: str, stub: Any) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    try:
        await generate(stub, [5] * (info.max_input_tokens + 1))
        check(False, f"{engine}: an over-long prompt is refused")
    except grpc.aio.AioRpcError as error:
        check(error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_input_tokens" in (error.details() or ""),
              f"{engine}: an over-long prompt is refused with INVALID_ARGUMENT naming the limit")


async def check_two_tiers(engine: str, model: Path, generator_port: int) -> None:
    tokenizer = await start_tokenizer(TokenizerConfig(str(model), "SmolLM2-135M-Instruct", address="127.0.0.1:0",
                                                      generator_address=f"127.0.0.1:{generator_port}"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer.port}") as channel:
            stub = text_pb2_grpc.TextGenerationServiceStub(channel)
            request = text_pb2.GenerateStreamRequest(prompt=PROMPTS[0],
                                                     stopping=text_pb2.StoppingCriteria(max_new_tokens=8))
            text = "".join([m.text async for m in stub.GenerateStream(request)])
            check("Paris" in text, f"{engine}: both tiers: {PROMPTS[0]!r} -> {text!r}")
    finally:
        await tokenizer.stop(0)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    work = parser.parse_args().work
    model = ensure_default_model(default_cache_dir())
    engine_dir = work / "engine"
    build_engine(model, engine_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    reference: dict[int, list[int]] = {}
    for engine in ("torch", "trtllm", "trtllm-engine"):
        await check_engine(engine, model, engine_dir, prompts, reference)
    print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":  # the LLM API spawns MPI workers and needs this guard
    sys.exit(asyncio.run(main()))
