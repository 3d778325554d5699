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
