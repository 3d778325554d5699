"""Rebuilding an RPC's handler with another behaviour, for server interceptors.

grpc.aio interceptors can only swap the whole method handler, so each one that refuses or counts
calls builds a handler of the same kind (unary or server-streaming) around the original.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

Metadata = Sequence[tuple[str, str]]
# Runs before the call's behaviour; the returned callable (if any) runs once the call has ended.
Before = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Callable[[], None] | None]]


def wrap_handler(handler: grpc.RpcMethodHandler, before: Before,
                 request_deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """The same RPC with `before` run first; unary and server-streaming RPCs only (others unchanged)."""
    if handler.request_streaming:
        return handler
    if handler.response_streaming:
        inner_stream: Any = handler.unary_stream  # grpc-stubs types behaviours as synchronous

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            after = await before(request, context)
            try:
                async for response in inner_stream(request, context):
                    yield response
            finally:
                if after is not None:
                    after()

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer, handler.response_serializer)
    inner_unary: Any = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        after = await before(request, context)
        try:
            return await inner_unary(request, context)
        finally:
            if after is not None:
                after()

    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer, handler.response_serializer)


def refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str,
                     trailers: Metadata = ()) -> grpc.RpcMethodHandler:
    """The same RPC ending every call with `code` before the request is even decoded."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details, tuple(trailers))

    return wrap_handler(handler, refuse)  # no deserializer: the request bytes are never parsed


class StreamClosingInterceptor(grpc.aio.ServerInterceptor):
    """Closes a streaming RPC's response generators inside the RPC's own task.

    grpcio drives a response generator with `async for` and, when the call is cancelled while the
    generator waits at a `yield`, leaves it to be closed later by the garbage collector, in another
    task's context. Generators that hold context variables across `yield` (the tracing interceptor's
    current span) then fail to restore them and log an error with a traceback for every cancelled
    stream. Installed outermost, this turns each streaming handler into one that writes its messages
    with `context.write` and closes the generator in a `finally`, in the RPC's task.
    """

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.response_streaming:
            return handler
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _writer(handler.stream_stream), handler.request_deserializer, handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(
            _writer(handler.unary_stream), handler.request_deserializer, handler.response_serializer)


def _writer(behaviour: Any) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
    async def write_all(request: Any, context: grpc.aio.ServicerContext) -> None:
        responses = behaviour(request, context)
        try:
            async for response in responses:
                await context.write(response)
        finally:
            await responses.aclose()

    return write_all
