"""The generator tier's gRPC edge: protobuf in and out, plain types inside."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.errors import NotReady, RequestError
from splitserve.common.request_telemetry import RequestTracker
from splitserve.common.status import abort_with
from splitserve.generator.engine import Engine
from splitserve.generator.multiplex import MultiplexedStream
from splitserve.generator.tracked import run_tracked
from splitserve.link.convert import chunk_to_pb, info_to_pb, load_to_pb, request_from_pb
from splitserve.link.types import GeneratorInfo

log = logging.getLogger(__name__)


class TokenGenerationServicer(tokens_pb2_grpc.TokenGenerationServiceServicer):
    """Serves token-level generation from one engine."""

    def __init__(self, engine: Engine, tokenizer_fingerprint: str, tracker: RequestTracker) -> None:
        self._engine = engine
        self._fingerprint = tokenizer_fingerprint
        self._tracker = tracker
        self.ready = False  # set once the engine has started; until then calls are UNAVAILABLE

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady("the generator is loading its model; retry shortly")

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            with self._tracker.track(request.request_id or "anonymous") as tracked:
                tracked.set_trace_id(context)
                self._check_ready()
                # aclosing: a cancelled call closes the stream, which aborts the request in the engine
                stream = run_tracked(self._engine, tracked, request_from_pb(request))
                async with contextlib.aclosing(stream) as chunks:
                    async for chunk in chunks:
                        yield chunk_to_pb(chunk)
        except RequestError as error:
            await abort_with(context, error)

    async def GenerateMany(
        self, request_iterator: AsyncIterator[pb.GenerateManyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateManyResponse]:
        async for response in MultiplexedStream(self._engine, self._tracker, self._check_ready).serve(
                request_iterator):
            yield response

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        try:
            self._check_ready()
        except RequestError as error:
            await abort_with(context, error)
        return info_to_pb(GeneratorInfo(self._engine.info, self._fingerprint))

    async def GetLoad(
        self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoadResponse:
        try:
            self._check_ready()
        except RequestError as error:
            await abort_with(context, error)
        return load_to_pb(self._engine.load())
