"""The native engine on CPU with the real default model: parity with transformers, batching, caching, seeds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from splitserve.common.errors import EngineUnavailable
from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.link.types import FinishReason, SamplingParams

from .native_support import PROMPTS, native_engine, run

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> list[list[int]]:
    """transformers' greedy `generate` in fp32, one prompt at a time: the ground truth."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
                               )[0, len(p):].tolist() for p in PROMPTS]


@pytest.fixture(scope="module")
async def engine(model_dir: Path) -> AsyncIterator[NativeEngine]:
    async with native_engine(model_dir) as started:
        yield started


async def test_greedy_matches_transformers_alone_and_batched(engine: NativeEngine, reference: list[list[int]]) -> None:
    alone = [await run(engine, p, NEW_TOKENS, ignore_eos=True) for p in PROMPTS]
    batched = await asyncio.gather(*(run(engine, p, NEW_TOKENS, ignore_eos=True) for p in PROMPTS))
    assert [r.token_ids for r in alone] == reference
    assert [r.token_ids for r in batched] == reference
    final = alone[0].final
    assert final is not None and final.finish_reason is FinishReason.LENGTH
    assert final.num_prompt_tokens == len(PROMPTS[0]) and final.num_generated_tokens == NEW_TOKENS


async def test_chunked_prefill_equals_unchunked(model_dir: Path, engine: NativeEngine) -> None:
    long_prompt = [t for p in PROMPTS for t in p]  # 62 tokens, prefilled 8 at a time below
    whole = await run(engine, long_prompt, 24)
    async with native_engine(model_dir, max_batch_tokens=8) as chunked:
        assert (await run(chunked, long_prompt, 24)).token_ids == whole.token_ids


async def test_preemption_by_recompute_gives_the_same_tokens(model_dir: Path, reference: list[list[int]]) -> None:
    # 8 sequences of up to 73 tokens need 40 blocks of 16; the cache has 24, so some are preempted.
    async with native_engine(model_dir, kv_cache_tokens=384, max_total_tokens=256, max_input_tokens=128) as small:
        results = await asyncio.gather(*(run(small, p, NEW_TOKENS, ignore_eos=True) for p in PROMPTS))
        loop_thread = small._loop_thread
        assert loop_thread is not None
        preemptions, crashes = loop_thread.preemptions, loop_thread.restarts
        blocks = small._loop_thread.scheduler.block_manager  # type: ignore[union-attr]
        assert blocks.num_free_blocks == blocks.num_blocks
    assert [r.token_ids for r in results] == reference
    assert preemptions > 0 and crashes == 0


async def test_prefix_cache_hit_gives_the_same_tokens(engine: NativeEngine) -> None:
    shared = [t for p in PROMPTS[:4] for t in p] + PROMPTS[4]  # 37 tokens: two full blocks of 16
    miss = await run(engine, [*shared, 11], 16)
    hit = await run(engine, [*shared, 11], 16)
    assert miss.final is not None and hit.final is not None
    assert hit.final.num_cached_prompt_tokens == 32 and hit.token_ids == miss.token_ids


async def test_cancelling_returns_every_block(engine: NativeEngine) -> None:
    blocks = engine._loop_thread.scheduler.block_manager  # type: ignore[union-attr]
    before = blocks.num_free_blocks

    async def cancel_after_two_chunks(prompt: list[int]) -> None:
        from splitserve.link.types import GenerationRequest

        stream = engine.generate(GenerationRequest("cancel", prompt, max_new_tokens=200))
        await anext(stream)
        await anext(stream)
        await stream.aclose()

    await asyncio.gather(*(cancel_after_two_chunks(p) for p in PROMPTS))
    for _ in range(100):  # the aborts are applied at the engine's next step
        if blocks.num_free_blocks == before and engine.load().running_requests == 0:
            break
        await asyncio.sleep(0.02)
    assert blocks.num_free_blocks == before and engine.load().running_requests == 0


async def test_seeded_sampling_is_batch_invariant(engine: NativeEngine) -> None:
    sampling = SamplingParams(temperature=0.9, top_p=0.95, seed=1234)
    alone = await run(engine, PROMPTS[1], 32, sampling=sampling)
    others = [SamplingParams(temperature=0.7 + i / 50, top_k=20 + i, seed=i) for i in range(15)]
    together = await asyncio.gather(run(engine, PROMPTS[1], 32, sampling=sampling),
                                    *(run(engine, PROMPTS[i % 8], 32, sampling=s) for i, s in enumerate(others)))
    assert together[0].token_ids == alone.token_ids
    other_seed = await run(engine, PROMPTS[1], 32, sampling=SamplingParams(temperature=0.9, top_p=0.95, seed=4321))
    assert other_seed.token_ids != alone.token_ids
    assert alone.final is not None and alone.final.seed == 1234


async def test_unseeded_sampling_reports_the_seed_it_used(engine: NativeEngine) -> None:
    first = await run(engine, PROMPTS[2], 16, sampling=SamplingParams(temperature=1.0))
    assert first.final is not None and first.final.seed is not None
    again = await run(engine, PROMPTS[2], 16, sampling=SamplingParams(temperature=1.0, seed=first.final.seed))
    assert again.token_ids == first.token_ids


async def test_logprobs_and_top_logprobs_come_from_the_model(engine: NativeEngine, model_dir: Path) -> None:
    result = await run(engine, PROMPTS[0], 4, logprobs=True, top_logprobs=3)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([PROMPTS[0] + result.token_ids])).logits[0, len(PROMPTS[0]) - 1:-1]
    expected = torch.log_softmax(logits, dim=-1)
    for i, token in enumerate(result.tokens):
        assert token.logprob == pytest.approx(expected[i, token.token_id].item(), abs=1e-4)
        top = expected[i].topk(3)
        assert [t for t, _ in token.top_logprobs] == top.indices.tolist()
        assert [v for _, v in token.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)


async def test_min_new_tokens_holds_back_eos(engine: NativeEngine) -> None:
    eos = engine.info.eos_token_ids[0]
    result = await run(engine, PROMPTS[0], 40, min_new_tokens=30, stop_token_ids=(13,))
    assert len(result.token_ids) >= 30 and eos not in result.token_ids[:30] and 13 not in result.token_ids[:30]


async def test_a_crashed_step_fails_streams_in_flight_and_the_engine_goes_on(engine: NativeEngine) -> None:
    loop_thread = engine._loop_thread
    assert loop_thread is not None
    runner = loop_thread._runner
    real_launch = runner.launch
    calls = 0

    def fail_once(output):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected fault")
        return real_launch(output)

    runner.launch = fail_once  # type: ignore[method-assign]
    try:
        with pytest.raises(EngineUnavailable, match="injected fault"):
            await run(engine, PROMPTS[3], 20)
    finally:
        runner.launch = real_launch  # type: ignore[method-assign]
    assert engine.restarts == 1
    assert len((await run(engine, PROMPTS[3], 8)).token_ids) == 8
