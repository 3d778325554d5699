"""One text generation: token IDs to the generator, streamed IDs back into exact text.

Stop strings are matched on the text with hold-back; when one matches, the text is cut, the stream
ends with the matched string, and the generator call is cancelled (closing its iterator).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from splitserve.common.request_telemetry import TrackedRequest
from splitserve.link.types import FinishReason, GenerationChunk
from splitserve.tokenizer.detokenizer import IncrementalDetokenizer
from splitserve.tokenizer.generator_pool import TokenGenerator
from splitserve.tokenizer.stop_strings import StopStringMatcher
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import TextChunk, TextFinishReason, TextRequest, TextToken

_FINISH = {
    FinishReason.LENGTH: TextFinishReason.LENGTH,
    FinishReason.EOS_TOKEN: TextFinishReason.EOS_TOKEN,
    FinishReason.STOP_TOKEN: TextFinishReason.STOP_TOKEN,
    FinishReason.CANCELLED: TextFinishReason.CANCELLED,
}


class _Decoding:
    """Per-request text state: detokenizer, stop matcher and token count."""

    def __init__(self, codec: TextCodec, request: TextRequest) -> None:
        self.request = request
        self.detok = IncrementalDetokenizer(codec.tokenizer, request.generation.prompt_token_ids,
                                            request.skip_special_tokens)
        self.stops = StopStringMatcher(request.stop)
        self.completion_tokens = 0

    def decode(self, chunk: GenerationChunk) -> tuple[str, list[TextToken]]:
        step = self.detok.step
        pieces = [step(t.token_id) for t in chunk.tokens]
        self.completion_tokens += len(pieces)
        text = "".join(pieces)
        if chunk.finish_reason is not None:
            text += self.detok.flush()
        if not self.request.include_tokens:
            return text, []
        return text, [TextToken(t.token_id, piece, t.logprob, t.top_logprobs)
                      for t, piece in zip(chunk.tokens, pieces, strict=True)]


async def generate_text(codec: TextCodec, generator: TokenGenerator, request: TextRequest,
                        timeout: float | None, tracked: TrackedRequest | None = None) -> AsyncIterator[TextChunk]:
    """Streams text chunks for one request; the last chunk carries finish reason and usage."""
    state = _Decoding(codec, request)
    prompt_tokens = len(request.generation.prompt_token_ids)
    stream = generator.generate(request.generation, timeout)
    if tracked is not None:  # times tokens as they arrive from the generator, before stop-string hold-back
        stream = tracked.observe(stream, None, "detokenize")
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            text, tokens = state.decode(chunk)
            emit, matched = state.stops.feed(text)
            if matched is not None:  # leaving the block closes the generator stream
                yield TextChunk(emit, tokens, TextFinishReason.STOP_SEQUENCE, matched, None,
                                prompt_tokens, state.completion_tokens, request.generation.sampling.seed,
                                chunk.num_cached_prompt_tokens)  # known when the match is in the last chunk
                return
            if chunk.finish_reason is None:
                if emit or tokens:
                    yield TextChunk(emit, tokens)
                continue
            yield TextChunk(emit + state.stops.flush(), tokens, _FINISH[chunk.finish_reason], "",
                            chunk.stop_token_id, prompt_tokens, state.completion_tokens, chunk.seed,
                            chunk.num_cached_prompt_tokens)
            return
