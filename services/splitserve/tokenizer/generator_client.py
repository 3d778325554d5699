"""The tokenizer tier's connection to the generator tier (internal token-ID API)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.errors import EngineUnavailable, InvalidRequest, Overloaded, RequestError
from splitserve.common.grpc_server import SERVER_OPTIONS
from splitserve.generator.types import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenOutput,
)

_FINISH = {
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_EOS_TOKEN: FinishReason.EOS_TOKEN,
    pb.FINISH_REASON_STOP_TOKEN: FinishReason.STOP_TOKEN,
    pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
}


def request_to_pb(request: GenerationRequest) -> pb.GenerateRequest:
    s = request.sampling
    return pb.GenerateRequest(
        request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
        sampling=pb.SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                   repetition_penalty=s.repetition_penalty, seed=s.seed),
        max_new_tokens=request.max_new_tokens, min_new_tokens=request.min_new_tokens,
        stop_token_ids=list(request.stop_token_ids), ignore_eos=request.ignore_eos,
        logprobs=request.logprobs, top_logprobs=request.top_logprobs,
    )


def chunk_from_pb(msg: pb.GenerateResponse) -> GenerationChunk:
    tokens = [TokenOutput(t.id, t.logprob if t.HasField("logprob") else None,
                          tuple((a.id, a.logprob) for a in t.top_logprobs)) for t in msg.tokens]
    if msg.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return GenerationChunk(tokens)
    return GenerationChunk(
        tokens, _FINISH[msg.finish_reason], msg.stop_token_id if msg.HasField("stop_token_id") else None,
        msg.prompt_tokens, msg.completion_tokens, msg.seed if msg.HasField("seed") else None,
    )


def error_from_rpc(error: grpc.aio.AioRpcError) -> RequestError:
    """Maps the generator's status onto the error the public API returns."""
    details = error.details() or ""
    code = error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(details)
    return EngineUnavailable(f"generator tier: {code.name}: {details}")


class GeneratorClient:
    """A channel to one generator replica."""

    def __init__(self, address: str, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self.address = address
        # interceptors: tracing's client spans and the traceparent header on every call
        self._channel = grpc.aio.insecure_channel(address, options=SERVER_OPTIONS, interceptors=list(interceptors))
        self._stub = tokens_pb2_grpc.TokenGenerationServiceStub(self._channel)

    async def model_info(self, timeout: float) -> pb.GetModelInfoResponse:
        """Waits up to `timeout` for the generator to answer (it may be starting or loading its model)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                result: pb.GetModelInfoResponse = await self._stub.GetModelInfo(
                    pb.GetModelInfoRequest(), timeout=max(remaining, 0.1), wait_for_ready=True)
                return result
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or remaining <= 0:
                    raise
            await asyncio.sleep(0.5)

    async def load(self, timeout: float = 5.0) -> pb.GetLoadResponse:
        result: pb.GetLoadResponse = await self._stub.GetLoad(pb.GetLoadRequest(), timeout=timeout)
        return result

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        """Streams chunks; closing this iterator cancels the call, which aborts the request upstream."""
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
        await self._channel.close(None)


async def _read_to_end(call: AsyncIterator[pb.GenerateResponse]) -> None:
    """Reads an ended or cancelled call to its end, which is when the tracing interceptor ends its client span."""
    with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
        async for _ in call:
            pass
