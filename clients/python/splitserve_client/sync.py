"""Blocking client (plain grpc channel)."""

from __future__ import annotations

from collections.abc import Iterator

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


class Client:
    """Blocking client; errors surface as grpc.RpcError with the server's status code."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        security = security or Security()
        credentials = security.channel_credentials()
        self._channel = (grpc.insecure_channel(address) if credentials is None
                         else grpc.secure_channel(address, credentials))
        self._metadata = security.metadata()
        self._stub = text_pb2_grpc.TextGenerationServiceStub(self._channel)

    def generate(self, prompt: Input, options: GenerationOptions | None = None,
                 timeout: float | None = None) -> Completion:
        msg = build_request(prompt, options or GenerationOptions(), pb.GenerateRequest)
        return completion_from_pb(self._stub.Generate(msg, timeout=timeout, metadata=self._metadata))

    def generate_stream(self, prompt: Input, options: GenerationOptions | None = None,
                        timeout: float | None = None) -> Iterator[Delta]:
        """Yields text deltas; closing the generator (or breaking out) cancels the request."""
        call = self._stub.GenerateStream(build_request(prompt, options or GenerationOptions()), timeout=timeout,
                                         metadata=self._metadata)
        try:
            for msg in call:
                yield delta_from_pb(msg)
        finally:
            call.cancel()

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._stub.Tokenize(pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens),
                                       metadata=self._metadata).ids)

    def detokenize(self, ids: list[int]) -> str:
        return str(self._stub.Detokenize(pb.DetokenizeRequest(ids=ids), metadata=self._metadata).text)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
