"""The public API's gRPC edge: text requests in, text deltas out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.common.errors import InvalidRequest, ModelNotFound, NotReady, RequestError
from splitserve.common.request_telemetry import RequestTracker, TrackedRequest
from splitserve.common.status import abort_with
from splitserve.link.types import GeneratorInfo
from splitserve.tokenizer import pb_convert
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.generator_pool import GeneratorPool, GeneratorPools
from splitserve.tokenizer.pipeline import generate_text
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import TextChunk

# Prompts longer than this are tokenized on a worker thread so the event loop keeps streaming.
OFF_LOOP_PROMPT_CHARS = 8192


class TextGenerationServicer(text_pb2_grpc.TextGenerationServiceServicer):
    """Serves the public text API in front of the generator pools (one per served model)."""

    def __init__(self, config: TokenizerConfig, tracker: RequestTracker) -> None:
        self._config = config
        self._tracker = tracker
        self._ready: tuple[TextCodec, GeneratorPools] | None = None
        self._tool_call_parser = config.tool_call_parser

    def set_ready(self, codec: TextCodec, generators: GeneratorPools) -> None:
        """Starts answering once every pool has an accepted replica; until then every call is UNAVAILABLE."""
        if self._tool_call_parser == "auto":
            self._tool_call_parser = codec.default_tool_parser
        self._ready = (codec, generators)

    @property
    def _codec(self) -> TextCodec:
        return self._parts()[0]

    @property
    def _vocab_size(self) -> int:
        return _pool_info(self._parts()[1].default).engine_info.vocab_size

    def _parts(self) -> tuple[TextCodec, GeneratorPools]:
        if self._ready is None:
            raise NotReady("the tokenizer tier is starting; retry shortly")
        return self._ready

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        request_id = pb_convert.request_id_of(request)
        try:
            chunks = [chunk async for chunk in self._stream(request, request_id, context)]
            model = self._check_model(request.model).model  # the pool's name (empty asks for the default)
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
            self._check_model(request.model)
            ids = await self._encode(request)
            tokens = self._codec.token_strings(ids) if request.return_tokens else []
            return pb.TokenizeResponse(ids=ids, tokens=tokens)
        except RequestError as error:
            await abort_with(context, error)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        try:
            self._check_model(request.model)
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
            pool = self._check_model(request.model)
            info, cfg = _pool_info(pool).engine_info, self._config
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

    async def _stream(self, request: pb_convert.AnyGenerateRequest, request_id: str,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[TextChunk]:
        with self._tracker.track(request_id) as tracked:
            tracked.set_trace_id(context)
            pool = self._check_model(request.model)
            tracked.set_engine(_pool_info(pool).engine_info.engine)
            with tracked.phase("tokenize"):
                prompt_ids = await self._encode(request)
            _record_prompt(tracked, request)
            text_request = pb_convert.text_request_from_pb(request, request_id, prompt_ids, self._config,
                                                           self._tool_call_parser)
            async for chunk in generate_text(self._codec, pool, text_request, context.time_remaining(),
                                             tracked):
                tracked.record_output(chunk.text)
                if chunk.finish_reason is not None:
                    tracked.finish(chunk.finish_reason.value, chunk.prompt_tokens, chunk.completion_tokens)
                yield chunk

    async def _encode(self, request: pb_convert.AnyGenerateRequest | pb.TokenizeRequest) -> list[int]:
        size = len(request.prompt) if request.WhichOneof("input") == "prompt" else 0  # type: ignore[union-attr]
        if size > OFF_LOOP_PROMPT_CHARS:
            return await asyncio.to_thread(pb_convert.encode_input, request, self._codec, self._config)
        return pb_convert.encode_input(request, self._codec, self._config)

    def _check_model(self, model: str) -> GeneratorPool:
        """The pool serving `model` (the default pool when empty); NOT_FOUND for a model no pool serves."""
        generators = self._parts()[1]
        pool = generators.get(model)
        if pool is None:
            raise ModelNotFound(f"model {model!r} is not served here; this server serves "
                                f"{', '.join(map(repr, generators.models))}")
        return pool


def _pool_info(pool: GeneratorPool) -> GeneratorInfo:
    """The pool's limits, fixed by its first accepted replica (a pool is not served before it has one)."""
    assert pool.info is not None, "pools are started before the servicer is ready"
    return pool.info


def _record_prompt(tracked: TrackedRequest, request: pb_convert.AnyGenerateRequest) -> None:
    """Hands the prompt text to the span (which keeps it only when the operator opted in)."""
    if tracked.records_content:
        kind = request.WhichOneof("input")
        text = request.prompt if kind == "prompt" else "\n".join(m.content for m in request.chat.messages)
        tracked.record_prompt(text)
