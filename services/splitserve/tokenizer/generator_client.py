"""The tokenizer tier's connection to the generator tier (internal token-ID API)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc
from opentelemetry import trace

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.errors import RequestError
from splitserve.common.grpc_server import SERVER_OPTIONS
from splitserve.link.convert import GENERATOR_TIER, chunk_from_pb, info_from_pb, load_from_pb, request_to_pb
from splitserve.link.errors import error_from_status
from splitserve.link.types import EngineLoad, GenerationChunk, GenerationRequest, GeneratorInfo
from splitserve.tokenizer.multiplex_client import MultiplexedClient


def error_from_rpc(error: grpc.aio.AioRpcError) -> RequestError:
    """The generator's status as the error the public API returns (UNAVAILABLE: the pool may retry elsewhere)."""
    return error_from_status(error.code().name, error.details() or "", GENERATOR_TIER)


class GeneratorClient:
    """A channel to one generator replica."""

    def __init__(self, address: str, interceptors: Sequence[grpc.aio.ClientInterceptor] = (), *,
                 credentials: grpc.ChannelCredentials | None = None, multiplexed: bool = True,
                 tracer: trace.Tracer | None = None, tls_server_name: str | None = None) -> None:
        self.address = address
        # interceptors: tracing's client spans and the traceparent header on every call
        self._channel = _open_channel(address, credentials, tls_server_name, interceptors)
        self._stub = tokens_pb2_grpc.TokenGenerationServiceStub(self._channel)
        # Multiplexed: every request shares one GenerateMany stream (far fewer messages under load).
        # It traces each request itself, so its channel has no interceptors: on a channel with any,
        # grpc.aio routes every write and read of a streaming call through a queue and a task of its own.
        # Channels with equal arguments share the connection.
        self._mux_channel = _open_channel(address, credentials, tls_server_name, ()) if interceptors else self._channel
        self._mux = MultiplexedClient(tokens_pb2_grpc.TokenGenerationServiceStub(self._mux_channel),
                                      tracer or trace.get_tracer(__name__)) if multiplexed else None

    async def model_info(self, timeout: float) -> GeneratorInfo:
        """Waits up to `timeout` for the generator to answer (it may be starting or loading its model)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                reply = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=max(remaining, 0.1),
                                                      wait_for_ready=True)
                return info_from_pb(reply)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or remaining <= 0:
                    raise
            await asyncio.sleep(0.5)

    async def load(self, timeout: float = 5.0) -> EngineLoad:
        return load_from_pb(await self._stub.GetLoad(pb.GetLoadRequest(), timeout=timeout))

    def generate(self, request: GenerationRequest, timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        """Streams chunks; closing this iterator aborts the request upstream."""
        if self._mux is not None:
            return self._mux.generate(request, timeout)
        return self._generate_call(request, timeout)

    async def _generate_call(self, request: GenerationRequest,
                             timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        """One Generate call per request."""
        call = self._stub.Generate(request_to_pb(request), timeout=timeout)
        finished = False
        try:
            async for msg in call:
                chunk = chunk_from_pb(msg)
                finished = chunk.finish_reason is not None
                yield chunk
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        finally:
            if not finished:
                call.cancel()  # no-op when the call already ended
            await _read_to_end(call)  # after the final message only the OK status is left to read

    async def close(self) -> None:
        if self._mux is not None:
            await self._mux.close()
        await self._channel.close(None)
        if self._mux_channel is not self._channel:
            await self._mux_channel.close(None)


def _open_channel(address: str, credentials: grpc.ChannelCredentials | None, tls_server_name: str | None,
                  interceptors: Sequence[grpc.aio.ClientInterceptor]) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=SERVER_OPTIONS, interceptors=list(interceptors))
    # TLS, mutual when the credentials hold a client certificate. Pods found through DNS are dialled
    # by IP: check their certificate against the service name.
    name = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
    return grpc.aio.secure_channel(address, credentials, options=[*SERVER_OPTIONS, *name],
                                   interceptors=list(interceptors))


async def _read_to_end(call: AsyncIterator[pb.GenerateResponse]) -> None:
    """Reads an ended or cancelled call to its end, which is when the tracing interceptor ends its client span."""
    with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
        async for _ in call:
            pass
