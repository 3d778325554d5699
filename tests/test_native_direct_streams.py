"""The native engine's direct streams (what the engine process uses): same outputs as `generate`, abort, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from splitserve.common.errors import Overloaded, RequestError
from splitserve.generator.engine import DirectStreams
from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.generator.validation import validate_request
from splitserve.link.types import FinishReason, GenerationChunk, GenerationRequest, SamplingParams

from .native_support import PROMPTS, native_engine, run


class Collected:
    """What `deliver` received, and an event set by the stream's last output."""

    def __init__(self) -> None:
        self.outputs: list[GenerationChunk | RequestError] = []
        self.ended = asyncio.Event()

    def deliver(self, output: GenerationChunk | RequestError) -> None:
        assert not self.ended.is_set(), "an output after the stream's last"
        self.outputs.append(output)
        if isinstance(output, RequestError) or output.finish_reason is not None:
            self.ended.set()

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for o in self.outputs if isinstance(o, GenerationChunk) for t in o.tokens]


def _request(engine: NativeEngine, prompt: list[int], max_new_tokens: int, **sampling: object) -> GenerationRequest:
    return validate_request(GenerationRequest("d", list(prompt), SamplingParams(**sampling),  # type: ignore[arg-type]
                                              max_new_tokens=max_new_tokens), engine.info)


async def _idle(engine: NativeEngine) -> None:
    async with asyncio.timeout(30):
        while engine.load().running_requests or engine.load().queued_requests or engine._in_flight:
            await asyncio.sleep(0.02)


async def test_direct_streams_match_generate_and_end_once(model_dir: Path) -> None:
    async with native_engine(model_dir) as engine:
        assert isinstance(engine, DirectStreams)
        expected = [await run(engine, p, 12, sampling=SamplingParams(temperature=0.8, seed=7)) for p in PROMPTS[:4]]
        streams = [Collected() for _ in PROMPTS[:4]]
        for prompt, stream in zip(PROMPTS[:4], streams, strict=True):
            engine.open_stream(_request(engine, prompt, 12, temperature=0.8, seed=7), stream.deliver)
        for stream, want in zip(streams, expected, strict=True):
            await asyncio.wait_for(stream.ended.wait(), 60)
            last = stream.outputs[-1]
            assert isinstance(last, GenerationChunk) and want.final is not None
            assert stream.token_ids == want.token_ids
            assert (last.finish_reason, last.num_generated_tokens, last.seed) == (
                FinishReason.LENGTH, 12, want.final.seed)
        await _idle(engine)


async def test_abort_frees_the_slot_and_nothing_more_arrives(model_dir: Path) -> None:
    async with native_engine(model_dir) as engine:
        stream = Collected()
        abort = engine.open_stream(_request(engine, PROMPTS[0], 200), stream.deliver)
        async with asyncio.timeout(30):
            while not stream.token_ids:
                await asyncio.sleep(0.01)
        abort()
        abort()  # twice is harmless
        await _idle(engine)
        received = len(stream.outputs)
        await asyncio.sleep(0.2)
        assert len(stream.outputs) == received and not stream.ended.is_set()


async def test_a_full_queue_is_refused_before_anything_runs(model_dir: Path) -> None:
    async with native_engine(model_dir, max_batch_size=1, max_queued_requests=0) as engine:
        first = Collected()
        abort = engine.open_stream(_request(engine, PROMPTS[0], 200), first.deliver)
        with pytest.raises(Overloaded):
            engine.open_stream(_request(engine, PROMPTS[1], 4), Collected().deliver)
        abort()
        await _idle(engine)
