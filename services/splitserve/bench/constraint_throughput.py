"""Native-engine throughput with a share of streams constrained: `python -m splitserve.bench.constraint_throughput`.

N concurrent streams (in process, no gRPC), each `--new-tokens` long at temperature 1: unconstrained ones with
ignore_eos, constrained ones under a JSON schema that cannot end sooner (an array of at least that many
integers), so every stream yields the same number of tokens and only the mask's cost differs between rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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


async def measure(streams: list[int], new_tokens: int, shares: list[float], device: str, model: str = "default",
                  rounds: int = 1) -> None:
    """One engine (sized for the most streams), a table per stream count."""
    path, _ = resolve_model(model, default_cache_dir())
    config = GeneratorConfig(str(path), DEFAULT_MODEL_NAME, max_batch_size=max(streams), device=device,
                             kv_cache_tokens=max(16384, max(streams) * (new_tokens + 64)))
    engine = NativeEngine(config, lambda serving: None)
    await engine.start()
    try:
        for count in streams:
            await _measure_streams(engine, count, new_tokens, shares, rounds)
    finally:
        await engine.stop()


async def _measure_streams(engine: NativeEngine, streams: int, new_tokens: int, shares: list[float],
                           rounds: int) -> None:
    counts = [round(streams * share) for share in shares]
    for num in counts:  # warm: compiles the grammar (cached after) and this batch size's graphs
        await _run_all(engine, [_request(i, i < num, new_tokens) for i in range(streams)])
    print(f"\n{streams} streams, {new_tokens} new tokens each\n")
    print("| round | constrained streams | tokens | seconds | output tok/s |")
    print("|---|---|---|---|---|")
    rates: dict[int, list[float]] = {num: [] for num in counts}
    for round_index in range(rounds):  # rounds interleave the shares, so drift hits every share alike
        for num in counts:
            tokens, seconds = await _run_all(engine, [_request(i, i < num, new_tokens) for i in range(streams)])
            if tokens != streams * new_tokens:  # no stream can end early: one did, so its mask let a refused token by
                raise RuntimeError(f"{tokens} tokens from {streams} streams of {new_tokens}: a stream ended early")
            rates[num].append(tokens / seconds)
            print(f"| {round_index + 1} | {num} of {streams} | {tokens} | {seconds:.2f} | {tokens / seconds:.1f} |",
                  flush=True)
    _print_summary(streams, rates)


def _print_summary(streams: int, rates: dict[int, list[float]]) -> None:
    """Median throughput per share, and the share of it lost against the unconstrained row."""
    base = statistics.median(rates[min(rates)])
    print("\n| constrained streams | median output tok/s | lost vs. fewest constrained |")
    print("|---|---|---|")
    for num, values in rates.items():
        median = statistics.median(values)
        print(f"| {num} of {streams} | {median:.1f} | {100 * (1 - median / base):.1f} % |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, action="append", help="concurrent streams (repeatable; default 16)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--share", type=float, action="append", help="constrained share (default 0, 0.5, 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the shares")
    parser.add_argument("--model", default="default",
                        help="model folder (its vocabulary must hold the default model's ids: the prompt is token ids)")
    args = parser.parse_args(argv)
    asyncio.run(measure(args.streams or [16], args.new_tokens, args.share or [0.0, 0.5, 1.0], args.device, args.model,
                        args.rounds))


if __name__ == "__main__":
    main()
