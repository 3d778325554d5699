"""Holding a request's tokens for an interval: fewer, larger chunks, nothing lost, nothing late at the ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from splitserve.api.text.v1 import text_pb2 as text_pb
from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.generator.coalesce import coalesced
from splitserve.link.types import FinishReason, GenerationChunk, TokenOutput

from .bench_stack import BenchStack, bench_stack

STEP_S = 0.005


async def engine_steps(count: int, closed: list[bool]) -> AsyncGenerator[GenerationChunk, None]:
    """One token per 5 ms step, the last chunk finishing the stream."""
    try:
        for i in range(count - 1):
            yield GenerationChunk([TokenOutput(i)])
            await asyncio.sleep(STEP_S)
        yield GenerationChunk([TokenOutput(count - 1)], FinishReason.LENGTH, None, 3, count)
    finally:
        closed.append(True)


async def test_tokens_are_held_for_the_interval_and_none_are_lost() -> None:
    started, arrivals = time.monotonic(), []
    async for chunk in coalesced(engine_steps(40, []), 0.03):
        arrivals.append((time.monotonic() - started, [t.token_id for t in chunk.tokens], chunk.finish_reason))
    assert [i for _, ids, _ in arrivals for i in ids] == list(range(40))
    assert arrivals[0][1] == [0] and arrivals[0][0] < STEP_S  # the first token is not held
    assert arrivals[-1][2] is FinishReason.LENGTH  # the held tokens ride with the last chunk
    middle = arrivals[1:-1]
    assert len(arrivals) <= 40 * STEP_S / 0.03 + 3, f"{len(arrivals)} chunks: tokens were not held"
    assert all(later - earlier >= 0.03 for (earlier, *_), (later, *_) in zip(arrivals, middle, strict=False))


async def test_closing_the_coalesced_stream_closes_the_engine_stream() -> None:
    closed: list[bool] = []
    stream = coalesced(engine_steps(40, closed), 0.03)
    await anext(stream)
    await stream.aclose()
    assert closed == [True]  # that is what aborts the request in the engine


async def _deltas(stack: BenchStack, interval_ms: int) -> list[int]:
    """Token counts of the deltas one GenerateMany request gets (40 tokens at the bench engine's 4 ms step)."""
    start = pb.GenerateRequest(request_id="c", prompt_token_ids=[5, 6, 7], max_new_tokens=40, ignore_eos=True,
                               min_message_interval_ms=interval_ms)
    call = stack.tokens.GenerateMany()
    await call.write(pb.GenerateManyRequest(stream_id=1, start=start))
    counts: list[int] = []
    while True:
        message = await call.read()
        for delta in message.deltas:
            counts.append(len(delta.response.tokens))
            if delta.response.finish_reason:
                await call.done_writing()
                return counts


async def test_generator_holds_a_request_s_tokens_when_asked(model_dir: Path) -> None:
    async with bench_stack(model_dir) as stack:
        every_step = await _deltas(stack, 0)
        held = await _deltas(stack, 30)
    assert sum(every_step) == sum(held) == 40
    assert held[0] == 1  # the first token is not held
    assert len(every_step) >= 35 and len(held) <= 12, (every_step, held)


async def test_text_streamed_with_an_interval_is_the_same_text_in_fewer_messages(model_dir: Path) -> None:
    request = text_pb.GenerateStreamRequest(prompt="The capital of France is", stopping=text_pb.StoppingCriteria(
        max_new_tokens=40, ignore_eos=True))
    texts = []
    for interval_ms in (0, 30):
        async with bench_stack(model_dir, tokenizer={"stream_interval_ms": interval_ms}) as stack:
            texts.append([m.text async for m in stack.text.GenerateStream(request)])
    plain, held = texts
    assert "".join(plain) == "".join(held)
    assert len(held) <= len(plain) / 3, (len(plain), len(held))
