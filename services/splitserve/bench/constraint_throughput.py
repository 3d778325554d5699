"""Native-engine throughput with a share of streams constrained: `python -m splitserve.bench.constraint_throughput`.

N concurrent streams (in process, no gRPC), each `--new-tokens` long at temperature 1: unconstrained ones with
ignore_eos, constrained ones under a JSON schema that cannot end sooner (an array of at least that many
integers), so every stream yields the same number of tokens and only the mask's cost differs between rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from splitserve.common.model_store import DEFAULT_MODEL_NAME, default_cache_dir, resolve_model
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.generator.validation import validate_request
from splitserve.link.types import Constraint, ConstraintKind, GenerationRequest, SamplingParams

PROMPT = [1780, 1208, 2010, 314, 253, 1230, 28, 1205, 2367]  # a short English prompt in the default vocabulary


def _request(i: int, constrained: bool, new_tokens: int) -> GenerationRequest:
    sampling = SamplingParams(temperature=1.0, seed=i)
    if not constrained:
        return GenerationRequest(f"free-{i}", PROMPT, sampling, max_new_tokens=new_tokens, ignore_eos=True)
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": new_tokens}
    constraint = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(schema))
    return GenerationRequest(f"json-{i}", PROMPT, sampling, max_new_tokens=new_tokens, constraint=constraint)


async def _run_all(engine: NativeEngine, requests: list[GenerationRequest]) -> tuple[int, float]:
    async def one(request: GenerationRequest) -> int:
        count = 0
        async for chunk in engine.generate(validate_request(request, engine.info)):
            count += len(chunk.tokens)
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(r) for r in requests))
    return sum(counts), time.perf_counter() - start


async def measure(streams: int, new_tokens: int, shares: list[float], device: str, model: str = "default") -> None:
    path, _ = resolve_model(model, default_cache_dir())
    config = GeneratorConfig(str(path), DEFAULT_MODEL_NAME, max_batch_size=streams, device=device,
                             kv_cache_tokens=max(16384, streams * (new_tokens + 64)))
    engine = NativeEngine(config, lambda serving: None)
    await engine.start()
    try:
        await _run_all(engine, [_request(0, True, 4)])  # compiles (and caches) the schema's grammar family
        print("| constrained streams | tokens | seconds | output tok/s |")
        print("|---|---|---|---|")
        for share in shares:
            num = round(streams * share)
            await _run_all(engine, [_request(i, i < num, new_tokens) for i in range(streams)])  # warm: compile
            tokens, seconds = await _run_all(engine, [_request(i, i < num, new_tokens) for i in range(streams)])
            print(f"| {num} of {streams} | {tokens} | {seconds:.2f} | {tokens / seconds:.1f} |", flush=True)
    finally:
        await engine.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--share", type=float, action="append", help="constrained share (default 0, 0.5, 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="default",
                        help="model folder (its tokenizer must be the default model's: the prompt is token ids)")
    args = parser.parse_args(argv)
    asyncio.run(measure(args.streams, args.new_tokens, args.share or [0.0, 0.5, 1.0], args.device, args.model))


if __name__ == "__main__":
    main()
