"""The engine in a child process (--engine-process): same tokens, cancellation, errors, and a child's death."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.errors import EngineUnavailable, Overloaded
from splitserve.generator.engine import create_engine
from splitserve.generator.engine_process import EngineProcess
from splitserve.link.types import FinishReason, GenerationChunk, GenerationRequest

from .bench_stack import bench_stack
from .conftest import generator_config
from .native_support import native_engine, run


async def _collect(engine: EngineProcess, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


async def _wait_for(condition: object, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


@pytest.fixture
async def health() -> list[bool]:
    return []


@pytest.fixture
async def engine(model_dir: Path, health: list[bool]) -> AsyncIterator[EngineProcess]:
    config = generator_config(model_dir, engine="bench", engine_process=True, max_batch_size=2,
                              max_queued_requests=1)
    process = create_engine(config, health.append)
    assert isinstance(process, EngineProcess)
    await process.start()
    yield process
    await process.stop()


def _request(max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest("r", list(range(100, 116)), max_new_tokens=max_new_tokens, ignore_eos=True)


async def test_streams_the_same_tokens_as_the_engine_in_this_process(engine: EngineProcess, model_dir: Path) -> None:
    local = create_engine(generator_config(model_dir, engine="bench"), lambda _: None)
    await local.start()
    try:
        expected = [t.token_id for c in [c async for c in local.generate(_request(12))] for t in c.tokens]
    finally:
        await local.stop()
    chunks = await _collect(engine, _request(12))
    assert [t.token_id for c in chunks for t in c.tokens] == expected
    assert chunks[-1].finish_reason is FinishReason.LENGTH and chunks[-1].num_generated_tokens == 12
    assert engine.info.engine == "bench" and engine.info.vocab_size > 0


async def test_closing_the_stream_frees_the_slot_in_the_child(engine: EngineProcess) -> None:
    stream = engine.generate(_request(1000))
    async with contextlib.aclosing(stream):
        await anext(stream)
        assert engine.load().running_requests == 1
    # Only the child's later load reports can show the slot free: keep one short request going to get them.
    await _collect(engine, _request(3))
    await _wait_for(lambda: engine.load().running_requests == 0)


async def test_request_errors_keep_their_code(engine: EngineProcess) -> None:
    running = [engine.generate(_request(1000)) for _ in range(2)]
    for stream in running:
        await anext(stream)
    queued_stream = engine.generate(_request(1000))
    queued = asyncio.create_task(anext(queued_stream))
    await asyncio.sleep(0.3)  # its Start reaches the child, which queues it: 2 running + 1 queued is the limit
    with pytest.raises(Overloaded, match="queue is full"):
        await _collect(engine, _request(1))
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    for stream in [*running, queued_stream]:
        await stream.aclose()


async def test_a_killed_child_fails_its_streams_and_is_restarted(engine: EngineProcess, health: list[bool]) -> None:
    stream = engine.generate(_request(1000))
    await anext(stream)
    child = engine._child
    assert child is not None and child.process.pid is not None
    os.kill(child.process.pid, signal.SIGKILL)
    with pytest.raises(EngineUnavailable, match="engine process exited"):
        async for _ in stream:
            pass
    with pytest.raises(EngineUnavailable, match="starting"):
        engine.generate(_request(1))
    await _wait_for(lambda: health == [False, True])
    chunks = await _collect(engine, _request(4))
    assert chunks[-1].num_generated_tokens == 4


async def test_both_tiers_over_an_engine_process(model_dir: Path) -> None:
    async with bench_stack(model_dir, {"engine_process": True}) as stack:
        reply = await stack.text.Generate(pb.GenerateRequest(
            prompt="Hello", stopping=pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True)))
        assert reply.usage.completion_tokens == 8 and reply.text.strip()
        assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert stack.generator.engine._child is None  # type: ignore[attr-defined]


async def test_the_native_engine_runs_in_a_child_process(model_dir: Path) -> None:
    """The child serves the native engine through its direct streams: same tokens, and an abort frees the slot."""
    prompt = [504, 3458, 282, 4649, 314]
    async with native_engine(model_dir) as local:
        expected = (await run(local, prompt, 8)).token_ids
    config = generator_config(model_dir, engine="native", engine_process=True, kv_page_size=16, max_batch_size=1,
                              max_queued_requests=0)
    process = create_engine(config, lambda _: None)
    assert isinstance(process, EngineProcess)
    await process.start()
    try:
        assert process.info.engine == "native" and process.info.capabilities.seed
        long = process.generate(GenerationRequest("long", prompt, max_new_tokens=200))
        await anext(long)
        await long.aclose()  # the one batch slot must come free for the next request
        chunks = await asyncio.wait_for(_collect(process, GenerationRequest("r", prompt, max_new_tokens=8)), 60)
    finally:
        await process.stop()
    assert [t.token_id for c in chunks for t in c.tokens] == expected
    assert chunks[-1].finish_reason is FinishReason.LENGTH and chunks[-1].num_generated_tokens == 8
