"""Asynchronous client (grpc.aio)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve_client.security import Security
from splitserve_client.types import (
    Completion,
    Delta,
    GenerationOptions,
    Input,
    build_request,
    completion_from_pb,
    delta_from_pb,
)


class AsyncClient:
    """Async client; errors surface as grpc.aio.AioRpcError with the server's status code."""

    def __init__(self, address: str, channel: grpc.aio.Channel | None = None, security: Security | None = None) -> None:
        security = security or Security()
        credentials = security.channel_credentials()
        self._channel = channel or (grpc.aio.insecure_channel(address) if credentials is None
                                    else grpc.aio.secure_channel(address, credentials))
        self._metadata = security.metadata()
        self._stub = text_pb2_grpc.TextGenerationServiceStub(self._channel)

    async def generate(self, prompt: Input, options: GenerationOptions | None = None,
                       timeout: float | None = None) -> Completion:
        msg = build_request(prompt, options or GenerationOptions(), pb.GenerateRequest)
        return completion_from_pb(await self._stub.Generate(msg, timeout=timeout, metadata=self._metadata))

    async def generate_stream(self, prompt: Input, options: GenerationOptions | None = None,
                              timeout: float | None = None) -> AsyncIterator[Delta]:
        """Yields text deltas; breaking out of the loop (or aclose()) cancels the request on the server."""
        call = self._stub.GenerateStream(build_request(prompt, options or GenerationOptions()), timeout=timeout,
                                         metadata=self._metadata)
        try:
            async for msg in call:
                yield delta_from_pb(msg)
        finally:
            call.cancel()

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        response = await self._stub.Tokenize(pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens),
                                             metadata=self._metadata)
        return list(response.ids)

    async def detokenize(self, ids: list[int]) -> str:
        return str((await self._stub.Detokenize(pb.DetokenizeRequest(ids=ids), metadata=self._metadata)).text)

    async def model_info(self) -> pb.GetModelInfoResponse:
        result: pb.GetModelInfoResponse = await self._stub.GetModelInfo(pb.GetModelInfoRequest(),
                                                                        metadata=self._metadata)
        return result

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


