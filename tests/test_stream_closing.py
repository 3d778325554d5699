"""A cancelled streaming call's response generators are closed in the call's own task, not by the GC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider

from splitserve.common.rpc_handlers import StreamClosingInterceptor


async def _cancel_streams(interceptors: list[grpc.aio.ServerInterceptor], calls: int) -> list[bool]:
    """Runs `calls` endless streams, each cancelled by the client after one message; for each, whether
    its generator was closed in the task that ran it."""
    same_task: list[bool] = []

    async def endless(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        started_in = asyncio.current_task()
        try:
            while True:
                yield b"token"  # always waiting here while grpcio sends: where a cancel finds it
        finally:
            same_task.append(asyncio.current_task() is started_in)

    async with _serving(endless, interceptors) as stream:
        for _ in range(calls):
            call = stream(b"")
            await call.read()
            call.cancel()
        async with asyncio.timeout(10):
            while len(same_task) < calls:
                await asyncio.sleep(0.02)
    return same_task


@contextlib.asynccontextmanager
async def _serving(behaviour: Any, interceptors: list[grpc.aio.ServerInterceptor]) -> AsyncIterator[Any]:
    """A server with one server-streaming method (bytes in, bytes out); yields a callable for it."""
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Service", {"Stream": grpc.unary_stream_rpc_method_handler(behaviour)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel.unary_stream("/test.Service/Stream")
    finally:
        await server.stop(None)


async def test_a_cancelled_stream_is_closed_in_the_task_that_ran_it() -> None:
    assert await _cancel_streams([StreamClosingInterceptor()], calls=30) == [True] * 30


async def test_cancelled_streams_under_the_tracing_interceptor_log_no_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    # Without the closing interceptor, grpcio leaves the tracing interceptor's generator to the
    # garbage collector, which closes it in another context: "Failed to detach context" and a traceback.
    tracing = aio_server_interceptor(tracer_provider=TracerProvider())
    with caplog.at_level(logging.ERROR):
        await _cancel_streams([StreamClosingInterceptor(), tracing], calls=30)
    assert not [r for r in caplog.records if "detach" in r.getMessage()]


async def test_writes_every_message_of_a_stream_that_ends() -> None:
    async def three(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for word in (b"a", b"b", b"c"):
            yield word

    async with _serving(three, [StreamClosingInterceptor()]) as stream:
        call = stream(b"")
        assert [m async for m in call] == [b"a", b"b", b"c"]
        assert await call.code() == grpc.StatusCode.OK
