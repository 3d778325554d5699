"""The link between the tiers on its own: protobuf ⇄ plain both ways, the error table, and the multiplexer's
protocol (streams kept apart, cancel, errors, fail-all) over an in-memory transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.common.errors import (
    EngineUnavailable,
    InvalidRequest,
    Overloaded,
    ReplicaUnavailable,
    RequestError,
)
from splitserve.link import convert
from splitserve.link.errors import error_from_status
from splitserve.link.multiplex import CallingEnd, ServingEnd
from splitserve.link.types import (
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GeneratorInfo,
    SamplingParams,
    TokenOutput,
)

REQUEST = GenerationRequest("r-1", [1, 2, 3], SamplingParams(temperature=0.5, top_k=4, seed=7, min_p=0.25),
                            max_new_tokens=9, min_new_tokens=2, stop_token_ids=(5, 6), ignore_eos=True,
                            logprobs=True, top_logprobs=2, min_message_interval_ms=20)
FINAL = GenerationChunk([TokenOutput(4, -0.5, ((4, -0.5), (8, -1.25))), TokenOutput(5)], FinishReason.STOP_TOKEN,
                        5, 3, 2, 7, num_cached_prompt_tokens=1)
INFO = GeneratorInfo(EngineInfo("m", "bench", 100, (2,), 10, 20, 10, 5, 8,
                                EngineCapabilities(seed=True, logprobs=True, max_top_logprobs=4, min_p=True)), "f" * 64)


def test_requests_cross_the_link_unchanged() -> None:
    assert convert.request_from_pb(convert.request_to_pb(REQUEST)) == REQUEST
    plain = GenerationRequest("r-2", [1])
    assert convert.request_from_pb(convert.request_to_pb(plain)) == plain  # None stays unset


def test_chunks_cross_the_link_unchanged() -> None:
    assert convert.chunk_from_pb(convert.chunk_to_pb(FINAL)) == FINAL
    middle = GenerationChunk([TokenOutput(9)])
    assert convert.chunk_from_pb(convert.chunk_to_pb(middle)) == middle


def test_model_info_and_load_cross_the_link_unchanged() -> None:
    assert convert.info_from_pb(convert.info_to_pb(INFO)) == INFO
    load = EngineLoad(3, 4, 0.5, 8)
    assert convert.load_from_pb(convert.load_to_pb(load)) == load


def test_outputs_share_one_message_and_errors_keep_their_class() -> None:
    msg = convert.outputs_to_pb([(1, FINAL), (2, Overloaded("queue full")), (3, InvalidRequest("too long"))])
    assert [d.stream_id for d in msg.deltas] == [1, 2, 3]
    first, overloaded, invalid = (convert.delta_from_pb(d) for d in msg.deltas)
    assert first == FINAL
    assert isinstance(overloaded, Overloaded) and overloaded.message == "queue full"
    assert isinstance(invalid, InvalidRequest) and invalid.message == "too long"


def test_a_generator_tier_failure_is_named_once() -> None:
    error = error_from_status("UNAVAILABLE", "Stream removed", convert.GENERATOR_TIER)
    assert isinstance(error, ReplicaUnavailable)
    assert error.message == "generator tier: UNAVAILABLE: Stream removed"
    internal = error_from_status("INTERNAL", "boom", convert.GENERATOR_TIER)
    assert type(internal) is EngineUnavailable and internal.message == "generator tier: INTERNAL: boom"
    assert type(error_from_status("UNAVAILABLE", "gone")) is EngineUnavailable  # the engine pipe: no peer
    assert error_from_status("INTERNAL", "boom").code_name == "INTERNAL"


class Link:
    """Both ends joined in memory: starts and cancels go one way, outputs come back once per loop turn."""

    def __init__(self, source: object) -> None:
        self.caller = CallingEnd()
        self.server = ServingEnd(self._wake)
        self._source = source  # request -> async generator of chunks
        self._flush_scheduled = False
        self.messages = 0
        self.connected = True

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        return self.caller.stream(lambda i: self._start(i, request), self._cancel)

    async def _start(self, stream_id: int, request: GenerationRequest) -> None:
        if not self.connected:
            raise EngineUnavailable("not connected")
        self.server.start(stream_id, lambda: self._run(stream_id, request))

    async def _run(self, stream_id: int, request: GenerationRequest) -> None:
        await self.server.pump(stream_id, self._source(request))  # type: ignore[operator]

    async def _cancel(self, stream_id: int) -> None:
        self.server.cancel(stream_id)

    def _wake(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outputs = self.server.take()
        if not outputs:
            return
        self.messages += 1
        for delta in convert.outputs_to_pb(outputs).deltas:  # through protobuf, as on the wire
            if (inbox := self.caller.inbox(delta.stream_id)) is not None:
                inbox.put(convert.delta_from_pb(delta))

    def disconnect(self) -> None:
        self.connected = False
        self.caller.fail_all(ReplicaUnavailable("generator tier: UNAVAILABLE: connection lost"))


async def counting(request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
    """Tokens prompt[0]+1 … one per step, then a LENGTH final."""
    count = request.max_new_tokens or 1
    for i in range(count - 1):
        yield GenerationChunk([TokenOutput(request.prompt_token_ids[0] + i)])
        await asyncio.sleep(0)
    yield GenerationChunk([TokenOutput(request.prompt_token_ids[0] + count - 1)], FinishReason.LENGTH, None,
                          len(request.prompt_token_ids), count)


async def ids_of(stream: AsyncGenerator[GenerationChunk, None]) -> list[int]:
    return [t.token_id async for chunk in stream for t in chunk.tokens]


async def test_streams_on_one_link_keep_their_own_tokens_and_share_messages() -> None:
    link = Link(counting)
    results = await asyncio.gather(*(ids_of(link.generate(GenerationRequest(str(i), [100 * i], max_new_tokens=20)))
                                     for i in range(1, 5)))
    assert results == [list(range(100 * i, 100 * i + 20)) for i in range(1, 5)]
    assert link.messages < 4 * 20  # outputs of one loop turn left together
    assert link.caller.open_streams == 0 and link.server.running == 0


async def test_closing_a_stream_early_cancels_it_on_the_serving_end() -> None:
    closed = asyncio.Event()

    async def endless(request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        try:
            while True:
                yield GenerationChunk([TokenOutput(1)])
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    link = Link(endless)
    async with contextlib.aclosing(link.generate(GenerationRequest("r", [1]))) as stream:
        await anext(stream)
    async with asyncio.timeout(5):
        await closed.wait()
        while link.server.running:
            await asyncio.sleep(0.01)
    assert link.caller.open_streams == 0


async def test_a_serving_error_ends_only_its_stream_with_its_class() -> None:
    async def picky(request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if request.request_id == "bad":
            raise InvalidRequest("prompt too long")
        async for chunk in counting(request):
            yield chunk

    link = Link(picky)
    bad, good = await asyncio.gather(ids_of(link.generate(GenerationRequest("bad", [1]))),
                                     ids_of(link.generate(GenerationRequest("good", [7], max_new_tokens=3))),
                                     return_exceptions=True)
    assert isinstance(bad, InvalidRequest) and bad.message == "prompt too long"
    assert good == [7, 8, 9]


async def test_an_unexpected_failure_is_internal_and_a_reused_id_is_refused() -> None:
    async def broken(request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        raise ZeroDivisionError("bug")
        yield  # an async generator

    link = Link(broken)
    with pytest.raises(RequestError) as failure:
        await ids_of(link.generate(GenerationRequest("r", [1])))
    # over gRPC the caller sees it as a generator-tier fault, named once
    assert failure.value.message == "generator tier: INTERNAL: internal error: bug"
    link.server.start(1, lambda: asyncio.sleep(1))
    link.server.start(1, lambda: asyncio.sleep(1))
    [(stream_id, refusal)] = link.server.take()
    assert stream_id == 1 and isinstance(refusal, InvalidRequest)
    await link.server.cancel_all()


async def test_when_the_connection_ends_every_open_stream_fails_and_nothing_hangs() -> None:
    async def slow(request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        yield GenerationChunk([TokenOutput(1)])
        await asyncio.sleep(3600)
        yield GenerationChunk([], FinishReason.LENGTH)

    link = Link(slow)
    streams = [link.generate(GenerationRequest(str(i), [1])) for i in range(3)]
    for stream in streams:
        await anext(stream)
    link.disconnect()
    for stream in streams:
        with pytest.raises(ReplicaUnavailable, match=r"^generator tier: UNAVAILABLE: connection lost$"):
            await anext(stream)
    with pytest.raises(EngineUnavailable):
        await ids_of(link.generate(GenerationRequest("late", [1])))
    assert link.caller.open_streams == 0
    await link.server.cancel_all()


async def test_waiting_chunks_are_taken_as_one_with_the_final_fields() -> None:
    caller = CallingEnd()
    sent = asyncio.Event()

    async def start(stream_id: int) -> None:
        sent.set()

    stream = caller.stream(start, start)
    first = asyncio.ensure_future(anext(stream))
    await sent.wait()
    inbox = caller.inbox(1)
    assert inbox is not None
    inbox.put(GenerationChunk([TokenOutput(5)]))
    inbox.put(GenerationChunk([TokenOutput(6)], FinishReason.EOS_TOKEN, 6, 8, 2, None, num_cached_prompt_tokens=6))
    merged = await first
    assert [t.token_id for t in merged.tokens] == [5, 6]
    assert (merged.finish_reason, merged.num_cached_prompt_tokens, merged.stop_token_id) == (
        FinishReason.EOS_TOKEN, 6, 6)
    await stream.aclose()


def test_the_error_message_fields_are_google_rpc_codes() -> None:
    [delta] = convert.outputs_to_pb([(4, Overloaded("full"))]).deltas
    assert delta.error.code == 8 and pb.RequestDelta.FromString(delta.SerializeToString()) == delta
