"""Checks splitserve's TensorRT-LLM engines against the real package (run by validate.sh, in the container).

Builds an engine dir for the default model, computes a greedy reference with plain `generate`, then
for the `trtllm` (LLM API) and `trtllm-engine` (prebuilt engine dir, ModelRunnerCpp's Executor)
engines starts the generator and the tokenizer tier in-process and checks: greedy parity, streaming,
cancellation (the slot is freed), limit errors, capabilities, and text through both tiers. Every
check prints one PASS or FAIL line; the exit code is 1 when any failed. With --standin (validate.sh's
dry run) the same checks run against the stand-in package, with an engine dir written in place of a
build and the stand-in's toy rule as the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from reference import standin_greedy, transformers_greedy

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
BUILD = {"max_batch_size": 8, "max_input_len": 512, "max_seq_len": 1024}
ENGINES = ("trtllm", "trtllm-engine")
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def build_engine(model: Path, engine_dir: Path, standin: bool) -> None:
    """trtllm-build through `splitserve build-engine`; the stand-in prints the commands and writes a dir."""
    if (engine_dir / "config.json").is_file():
        return
    parser = argparse.ArgumentParser()
    add_build_engine_arguments(parser)
    args = parser.parse_args(["--output-dir", str(engine_dir), "--max-batch-size", str(BUILD["max_batch_size"]),
                              "--max-input-len", str(BUILD["max_input_len"]),
                              "--max-seq-len", str(BUILD["max_seq_len"]), "--dtype", "bfloat16"]
                             + (["--dry-run"] if standin else []))
    args.model_path = str(model)
    built = run_build_engine(args) == 0
    if built and standin:
        write_standin_engine_dir(model, engine_dir)
    check(built, "engine build" + (" (commands only: stand-in)" if standin else ""))
    if not built:
        sys.exit(1)


def write_standin_engine_dir(model: Path, engine_dir: Path) -> None:
    """What trtllm-build leaves behind as far as the adapters read it: config.json's build_config."""
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    engine_dir.mkdir(parents=True, exist_ok=True)
    (engine_dir / "config.json").write_text(json.dumps({
        "version": "1.2.1", "build_config": BUILD,
        "pretrained_config": {"vocab_size": vocab, "mapping": {"world_size": 1, "tp_size": 1}}}))
    (engine_dir / "rank0.engine").write_bytes(b"stand-in")


async def generate(stub: Any, ids: list[int], **fields: Any) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(prompt_token_ids=ids, **{"max_new_tokens": MAX_NEW, **fields})
    return [m async for m in stub.Generate(request)]


def token_ids(messages: list[pb.GenerateResponse]) -> list[int]:
    return [t.id for m in messages for t in m.tokens]


async def check_engine(engine: str, model: Path, engine_dir: Path, prompts: list[list[int]],
                       reference: list[list[int]]) -> None:
    config = GeneratorConfig(str(model), "SmolLM2-135M-Instruct", address="127.0.0.1:0", engine=engine,
                             dtype="bfloat16", engine_dir=str(engine_dir), max_batch_size=8, max_input_tokens=512,
                             max_total_tokens=1024, kv_cache_free_gpu_memory_fraction=0.3)
    try:
        generator = await start_generator(config)
    except Exception as error:
        check(False, f"{engine}: starts ({type(error).__name__}: {error})")
        return
    check(True, f"{engine}: starts")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{generator.port}") as channel:
            stub = tokens_pb2_grpc.TokenGenerationServiceStub(channel)
            await check_tokens(engine, stub, prompts, reference)
            await check_cancel(engine, stub, generator.engine)
            await check_limits(engine, stub)
            await check_capabilities(engine, stub)
        await check_two_tiers(engine, model, generator.port, reference[0])
    finally:
        await generator.stop(0)


async def check_tokens(engine: str, stub: Any, prompts: list[list[int]], reference: list[list[int]]) -> None:
    results = await asyncio.gather(*(generate(stub, ids) for ids in prompts))  # concurrently: in-flight batching
    for index, messages in enumerate(results):
        got, want = token_ids(messages), reference[index]
        check(messages[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED, f"{engine}: prompt {index} finishes")
        check(len(messages) > 1, f"{engine}: prompt {index} streams ({len(messages)} messages)")
        same = got == want
        check(same or got[:8] == want[:8], f"{engine}: greedy parity on prompt {index}"
              + ("" if same else f" (first 8 equal; later bf16 drift: {got} vs {want})"))


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
    for what, ids, max_new, limit in (
            ("an over-long prompt", [5] * (info.max_input_tokens + 1), 1, "max_input_tokens"),
            ("prompt + max_new_tokens over the total", [5] * 100, info.max_new_tokens, "max_total_tokens")):
        code = await _refusal(stub, ids, max_new_tokens=max_new)
        check(code is not None and code[0] == grpc.StatusCode.INVALID_ARGUMENT and limit in code[1],
              f"{engine}: {what} is refused with INVALID_ARGUMENT naming {limit} ({_show(code)})")


async def check_capabilities(engine: str, stub: Any) -> None:
    """1.2.1's LLM API ignores repetition penalties: it must say so and refuse them, naming the version."""
    caps = (await stub.GetModelInfo(pb.GetModelInfoRequest())).capabilities
    code = await _refusal(stub, [10, 11], max_new_tokens=2, sampling=pb.SamplingParams(repetition_penalty=1.3))
    if caps.repetition_penalty:
        check(code is None, f"{engine}: repetition_penalty is advertised and served ({_show(code)})")
    else:
        check(code is not None and code[0] == grpc.StatusCode.INVALID_ARGUMENT and "TensorRT-LLM" in code[1],
              f"{engine}: repetition_penalty is not advertised and is refused naming the version ({_show(code)})")


async def _refusal(stub: Any, ids: list[int], **fields: Any) -> tuple[grpc.StatusCode, str] | None:
    try:
        await generate(stub, ids, **fields)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return None


def _show(code: tuple[grpc.StatusCode, str] | None) -> str:
    return "served" if code is None else f"{code[0].name}: {code[1]}"


async def check_two_tiers(engine: str, model: Path, generator_port: int, reference: list[int]) -> None:
    from transformers import AutoTokenizer

    want = AutoTokenizer.from_pretrained(model).decode(reference[:8], skip_special_tokens=True)
    tokenizer = await start_tokenizer(TokenizerConfig(str(model), "SmolLM2-135M-Instruct", address="127.0.0.1:0",
                                                      generator_address=f"127.0.0.1:{generator_port}"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer.port}") as channel:
            stub = text_pb2_grpc.TextGenerationServiceStub(channel)
            request = text_pb2.GenerateStreamRequest(prompt=PROMPTS[0],
                                                     stopping=text_pb2.StoppingCriteria(max_new_tokens=8))
            text = "".join([m.text async for m in stub.GenerateStream(request)])
            check(text.strip() == want.strip(), f"{engine}: both tiers: {PROMPTS[0]!r} -> {text!r} (want {want!r})")
    finally:
        await tokenizer.stop(0)


def greedy_reference(model: Path, prompts: list[list[int]], standin: bool) -> list[list[int]]:
    if not standin:
        return transformers_greedy(model, prompts, MAX_NEW)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return standin_greedy(prompts, MAX_NEW, int(eos), int(config.vocab_size))


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--standin", action="store_true", help="check against the stand-in package (a dry run)")
    args = parser.parse_args()
    model = ensure_default_model(default_cache_dir())
    engine_dir = args.work / ("standin-engine" if args.standin else "engine")
    build_engine(model, engine_dir, args.standin)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    reference = greedy_reference(model, prompts, args.standin)
    for engine in ENGINES:
        await check_engine(engine, model, engine_dir, prompts, reference)
    print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed", flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":  # the LLM API spawns MPI workers and needs this guard
    sys.exit(asyncio.run(main()))
