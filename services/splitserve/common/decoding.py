"""Requests that do not parse end with INVALID_ARGUMENT instead of grpcio's UNKNOWN."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc


class StrictDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Parses unary requests itself so that bad bytes (e.g. invalid UTF-8 in a string) are the caller's error."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        return _decoding_handler(handler)


def _decoding_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same RPC, given raw bytes by grpcio (no deserializer), parsing them itself."""
    parse: Any = handler.request_deserializer
    if handler.response_streaming:
        inner_stream: Any = handler.unary_stream  # grpc-stubs types behaviours as synchronous

        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in inner_stream(await _parse(parse, raw, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream, None, handler.response_serializer)
    inner_unary: Any = handler.unary_unary

    async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await inner_unary(await _parse(parse, raw, context), context)

    return grpc.unary_unary_rpc_method_handler(unary, None, handler.response_serializer)


async def _parse(parse: Callable[[bytes], Any], raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return parse(raw)
    except Exception as error:  # protobuf's DecodeError; any parse failure is the caller's
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request could not be decoded: {error}")
