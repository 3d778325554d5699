"""One generation request, validated, run on the engine and observed; shared by Generate and GenerateMany."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from splitserve.common.request_telemetry import TrackedRequest
from splitserve.generator.coalesce import coalesced
from splitserve.generator.engine import Engine
from splitserve.generator.validation import validate_request
from splitserve.link.types import GenerationChunk, GenerationRequest


async def run_tracked(engine: Engine, tracked: TrackedRequest,
                      request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
    """Yields the request's chunks, held for its message interval; closing this aborts the request in the engine."""
    info = engine.info  # some engines build it on each access
    validated = validate_request(request, info)
    tracked.set_engine(info.engine)
    stream = tracked.observe(engine.generate(validated), "queue_wait", "decode")
    if request.min_message_interval_ms:  # the caller wants fewer, larger messages
        stream = coalesced(stream, request.min_message_interval_ms / 1000)
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            if chunk.finish_reason is not None:
                tracked.finish(chunk.finish_reason.value, chunk.num_prompt_tokens, chunk.num_generated_tokens)
            yield chunk
