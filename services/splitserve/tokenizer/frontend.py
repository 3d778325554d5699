"""The text pipeline behind both public APIs (gRPC and OpenAI-compatible HTTP): model → pool, one
tokenization, tracking, then `generate_text`. The edges only convert their own messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from splitserve.common.errors import InvalidRequest, ModelNotFound, NotReady
from splitserve.common.request_telemetry import RequestTracker, TrackedRequest
from splitserve.link.types import GeneratorInfo
from splitserve.tokenizer.best_of import generate_best_of
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.generator_pool import GeneratorPool, GeneratorPools
from splitserve.tokenizer.pipeline import generate_text
from splitserve.tokenizer.samples import RunOne, generate_samples
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.text_input import TextInput, encode
from splitserve.tokenizer.types import TextChunk, TextRequest

# Builds the text request once the prompt is tokenized (each API has its own fields).
BuildRequest = Callable[[list[int]], TextRequest]


class TextFrontend:
    """The served models' pools and the codec, once the tier is ready; both APIs' requests go through it."""

    def __init__(self, config: TokenizerConfig, tracker: RequestTracker) -> None:
        self.config = config
        self.tracker = tracker
        self._ready: tuple[TextCodec, GeneratorPools] | None = None
        self.tool_call_parser = config.tool_call_parser  # "auto" is resolved from the model once ready

    def set_ready(self, codec: TextCodec, generators: GeneratorPools) -> None:
        """Starts answering once every pool has an accepted replica; until then every call is UNAVAILABLE."""
        if self.tool_call_parser == "auto":
            self.tool_call_parser = codec.default_tool_parser
        self._ready = (codec, generators)

    @property
    def is_ready(self) -> bool:
        return self._ready is not None

    @property
    def codec(self) -> TextCodec:
        return self._parts()[0]

    @property
    def pools(self) -> GeneratorPools:
        return self._parts()[1]

    def _parts(self) -> tuple[TextCodec, GeneratorPools]:
        if self._ready is None:
            raise NotReady("the tokenizer tier is starting; retry shortly")
        return self._ready

    def pool(self, model: str) -> GeneratorPool:
        """The pool serving `model` (the default pool when empty); NOT_FOUND for a model no pool serves."""
        generators = self.pools
        pool = generators.get(model)
        if pool is None:
            raise ModelNotFound(f"model {model!r} is not served here; this server serves "
                                f"{', '.join(map(repr, generators.models))}")
        return pool

    async def encode(self, text_input: TextInput) -> list[int]:
        if text_input.is_heavy:
            return await asyncio.to_thread(encode, text_input, self.codec, self.config)
        return encode(text_input, self.codec, self.config)

    async def generate(self, request_id: str, model: str, text_input: TextInput, build: BuildRequest,
                       time_remaining: Callable[[], float | None], api: str,
                       on_start: Callable[[TrackedRequest], None] = lambda _: None) -> AsyncIterator[TextChunk]:
        """Streams one request's text chunks; `time_remaining` is read once the prompt is tokenized."""
        with self.tracker.track(request_id, api) as tracked:
            on_start(tracked)
            pool = self.pool(model)
            tracked.set_engine(pool_info(pool).engine_info.engine)
            with tracked.phase("tokenize"):
                prompt_ids = await self.encode(text_input)
            if tracked.records_content:
                tracked.record_prompt(text_input.text_for_span())
            text_request, timeout = build(prompt_ids), time_remaining()

            def run(one: TextRequest) -> AsyncGenerator[TextChunk, None]:
                return generate_text(self.codec, pool, one, timeout, tracked)

            chunks = _completions(run, text_request, pool_info(pool))
            ended, completion_tokens = 0, 0
            async with contextlib.aclosing(chunks) as stream:
                async for chunk in stream:
                    if chunk.index == 0:
                        tracked.record_output(chunk.text)
                    if chunk.finish_reason is not None:
                        ended, completion_tokens = ended + 1, completion_tokens + chunk.completion_tokens
                        if ended == text_request.n:  # the request ends with its last completion
                            tracked.finish(chunk.finish_reason.value, chunk.prompt_tokens, completion_tokens)
                    yield chunk


def _completions(run: RunOne, request: TextRequest, info: GeneratorInfo) -> AsyncGenerator[TextChunk, None]:
    """One completion, n of them, or the n best of best_of."""
    if request.best_of:
        if not info.engine_info.capabilities.logprobs:
            raise InvalidRequest(f"best_of needs logprobs to rank the completions by: engine "
                                 f"{info.engine_info.engine_label} cannot honour logprobs")
        return generate_best_of(run, request)
    return run(request) if request.n == 1 else generate_samples(run, request)


def pool_info(pool: GeneratorPool) -> GeneratorInfo:
    """The pool's limits, fixed by its first accepted replica (a pool is not served before it has one)."""
    assert pool.info is not None, "pools are started before the frontend is ready"
    return pool.info
