"""Cancellation, deadlines, admission bounds with retry hints, and request limits, over both tiers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.common.errors import Overloaded
from splitserve.common.status import abort_with
from splitserve.generator.engines.bench_engine import BenchEngine, StepModel

from .bench_stack import BenchStack, bench_stack
from .conftest import Stack
from .test_generation import greedy

LIMITS = {"max_inflight_requests": 3, "max_prompt_chars": 4000, "max_stop_sequences": 4,
          "max_stop_sequence_length": 8, "max_receive_message_bytes": 64 * 1024, "max_concurrent_streams": 2}
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
async def bench(model_dir: Path) -> AsyncIterator[BenchStack]:
    async with bench_stack(model_dir, {"max_batch_size": 3, "max_queued_requests": 1}, LIMITS) as stack:
        yield stack


async def wait_for_load(stack: BenchStack | Stack, running: int, timeout: float = 5.0,
                        queued: int = 0) -> tpb.GetLoadResponse:
    """Polls the generator until `running` requests run and `queued` wait."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        load = await stack.tokens.GetLoad(tpb.GetLoadRequest())
        if load.running_requests == running and load.queued_requests == queued:
            return load
        assert asyncio.get_running_loop().time() < deadline, f"engine load did not settle: {load}"
        await asyncio.sleep(0.01)


def long_request(tokens: int = 1000) -> pb.GenerateStreamRequest:
    return greedy("Count:", tokens, ignore_eos=True)


async def test_deadline_exceeded_reaches_the_client_and_frees_the_engine(stack: Stack) -> None:
    call = stack.text.GenerateStream(greedy("Count slowly:", 250, ignore_eos=True), timeout=1.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for_load(stack, 0, timeout=2.0)  # the real model's slot and cache are back


async def test_deadline_reaches_the_generator_call(bench: BenchStack) -> None:
    # The tokenizer passes its remaining deadline on: the generator ends the call itself in time.
    call = bench.text.GenerateStream(long_request(), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for_load(bench, 0, timeout=1.0)


async def test_client_cancel_aborts_in_the_engine_within_one_step(bench: BenchStack) -> None:
    engine = bench.generator.engine
    assert isinstance(engine, BenchEngine)
    engine._model = StepModel(fixed_s=0.1, per_seq_s=0.0)  # steps far longer than two loopback hops
    try:
        call = bench.text.GenerateStream(long_request())
        await call.read()
        await call.read()
        steps_at_cancel = engine.steps
        call.cancel()
        await wait_for_load(bench, 0, timeout=2.0)
        assert engine.steps - steps_at_cancel <= 1, "the cancelled request stayed in the batch past one step"
    finally:
        engine._model = StepModel()


async def test_tokenizer_inflight_bound_refuses_with_a_retry_hint(bench: BenchStack) -> None:
    # separate connections (gRPC otherwise shares one per target), so max_concurrent_streams=2 does not apply
    channels = [grpc.aio.insecure_channel(bench.public_address, options=OWN_CONNECTION) for _ in range(4)]
    try:
        stubs = [text_pb2_grpc.TextGenerationServiceStub(c) for c in channels]
        running = [stub.GenerateStream(long_request()) for stub in stubs[:3]]
        for call in running:
            await call.read()
        refused = stubs[3].GenerateStream(long_request())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_inflight_requests=3" in (caught.value.details() or "")
        assert int(dict(caught.value.trailing_metadata() or ())["retry-after-ms"]) > 0
        running[0].cancel()
        await asyncio.sleep(0.1)
        again = stubs[3].GenerateStream(greedy("Count:", 4))
        assert [m async for m in again][-1].usage.completion_tokens == 4
    finally:
        for channel in channels:
            await channel.close()
    await wait_for_load(bench, 0)  # closing the client connections cancelled both tiers' calls


async def test_generator_queue_bound_refuses_with_a_retry_hint(bench: BenchStack) -> None:
    request = tpb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=1000, ignore_eos=True)
    calls = [bench.tokens.Generate(request) for _ in range(4)]  # max_batch_size 3 + max_queued_requests 1
    for call in calls[:3]:
        await call.read()
    queued = asyncio.ensure_future(calls[3].read())
    await wait_for_load(bench, 3, queued=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bench.tokens.Generate(request).read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(caught.value.trailing_metadata() or ())["retry-after-ms"]) > 0
    # through the public API the same refusal keeps its code and hint
    with pytest.raises(grpc.aio.AioRpcError) as public:
        await bench.text.GenerateStream(long_request()).read()
    assert public.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry-after-ms" in dict(public.value.trailing_metadata() or ())
    for call in calls:
        call.cancel()
    queued.cancel()
    await wait_for_load(bench, 0)


@pytest.mark.parametrize(("stopping", "prompt", "needle"), [
    ({"max_new_tokens": 2000}, "hi", "max_new_tokens=1024"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "hi", "max_stop_sequences=4"),
    ({"stop": ["a-very-long-stop"]}, "hi", "max_stop_sequence_length=8"),
    ({}, "x" * 4001, "max_prompt_chars=4000"),
    ({}, "hi " * 1100, "max_input_tokens=1024"),
    ({"max_new_tokens": 1024}, "hi " * 1100, "max_input_tokens=1024"),
])
async def test_limits_are_refused_naming_the_limit(bench: BenchStack, stopping: dict[str, object], prompt: str,
                                                   needle: str) -> None:
    request = pb.GenerateRequest(prompt=prompt, stopping=pb.StoppingCriteria(**stopping))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bench.text.Generate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (caught.value.details() or "")


async def test_message_size_is_refused_by_grpc_with_resource_exhausted(bench: BenchStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bench.text.Generate(pb.GenerateRequest(prompt="x" * 70_000))  # over 64 KiB
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (caught.value.details() or "")


async def test_concurrent_streams_per_connection_are_bounded(bench: BenchStack) -> None:
    # max_concurrent_streams=2: HTTP/2 holds the third stream on the client until a slot frees; it is not an error
    async with grpc.aio.insecure_channel(bench.public_address, options=OWN_CONNECTION) as channel:
        stub = text_pb2_grpc.TextGenerationServiceStub(channel)
        first, second = stub.GenerateStream(long_request()), stub.GenerateStream(long_request())
        await first.read()
        await second.read()
        third = stub.GenerateStream(greedy("Count:", 4))
        third_done = asyncio.ensure_future(third.read())
        await asyncio.sleep(0.5)
        assert not third_done.done(), "a third stream ran on a connection limited to two"
        assert (await bench.tokens.GetLoad(tpb.GetLoadRequest())).running_requests == 2
        first.cancel()
        assert (await asyncio.wait_for(third_done, 5)).text is not None
        second.cancel()
        third.cancel()
    await wait_for_load(bench, 0)


class _AbortRecorder:
    """The two ServicerContext methods abort_with uses; the trace id was set as a trailer before."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] = ()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-trace-id", "0af7651916cd43dd8448eb211c80319c"),)

    async def abort(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...]) -> None:
        self.aborted = (code, details, dict(trailers))
        raise grpc.RpcError()


async def test_a_retry_hint_does_not_replace_the_trace_id_trailer() -> None:
    context = _AbortRecorder()
    with pytest.raises(grpc.RpcError):
        await abort_with(context, Overloaded("queue full"))  # type: ignore[arg-type]
    code, _, trailers = context.aborted
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers == {"x-trace-id": "0af7651916cd43dd8448eb211c80319c", "retry-after-ms": "200"}
