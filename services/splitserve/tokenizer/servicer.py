"""The public API's gRPC edge: text requests in, text deltas out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.common.errors import InvalidRequest, RequestError
from splitserve.common.status import abort_with
from splitserve.tokenizer import pb_convert
from splitserve.tokenizer.frontend import TextFrontend, pool_info
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import TextChunk, TextRequest


class TextGenerationServicer(text_pb2_grpc.TextGenerationServiceServicer):
    """Serves the public text API in front of the generator pools (one per served model)."""

    def __init__(self, frontend: TextFrontend) -> None:
        self._frontend = frontend
        self._config = frontend.config

    @property
    def _codec(self) -> TextCodec:
        return self._frontend.codec

    @property
    def _vocab_size(self) -> int:
        return pool_info(self._frontend.pools.default).engine_info.vocab_size

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        request_id = pb_convert.request_id_of(request)
        try:
            chunks = [chunk async for chunk in self._stream(request, request_id, context)]
            model = self._frontend.pool(request.model).model  # the pool's name (empty asks for the default)
        except RequestError as error:
            await abort_with(context, error)
        return pb_convert.unary_response(chunks, request_id, model, self._codec)

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        request_id = pb_convert.request_id_of(request)
        try:
            async for chunk in self._stream(request, request_id, context):
                yield pb_convert.stream_response(chunk, request_id, self._codec)
        except RequestError as error:
            await abort_with(context, error)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        try:
            self._frontend.pool(request.model)
            ids = await self._frontend.encode(pb_convert.input_of(request))
            tokens = self._codec.token_strings(ids) if request.return_tokens else []
            return pb.TokenizeResponse(ids=ids, tokens=tokens)
        except RequestError as error:
            await abort_with(context, error)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        try:
            self._frontend.pool(request.model)
            vocab_size = self._vocab_size
            bad = [i for i in request.ids if i >= vocab_size]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is out of vocabulary (vocab_size={vocab_size})")
            skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
            return pb.DetokenizeResponse(text=self._codec.decode(request.ids, skip))
        except RequestError as error:
            await abort_with(context, error)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        try:
            pool = self._frontend.pool(request.model)
            info, cfg = pool_info(pool).engine_info, self._config
        except RequestError as error:
            await abort_with(context, error)
        return pb.GetModelInfoResponse(
            model=pool.model, engine=info.engine, vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids, max_input_tokens=info.max_input_tokens,
            max_total_tokens=info.max_total_tokens, max_new_tokens=info.max_new_tokens,
            default_max_new_tokens=info.default_max_new_tokens, tokenizer_fingerprint=self._codec.fingerprint,
            has_chat_template=self._codec.has_chat_template, max_stop_sequences=cfg.max_stop_sequences,
            max_stop_sequence_length=cfg.max_stop_sequence_length,
        )

    def _stream(self, request: pb_convert.AnyGenerateRequest, request_id: str,
                context: grpc.aio.ServicerContext) -> AsyncIterator[TextChunk]:
        def build(prompt_ids: list[int]) -> TextRequest:
            return pb_convert.text_request_from_pb(request, request_id, prompt_ids, self._config,
                                                   self._frontend.tool_call_parser)

        return self._frontend.generate(request_id, request.model, pb_convert.input_of(request), build,
                                       context.time_remaining, "grpc", lambda t: t.set_trace_id(context))
