"""One text generation: token IDs to the generator, streamed IDs back into exact text.

Stop strings are matched on the answer text with hold-back; when one matches, the text is cut, the
stream ends with the matched string, and the generator call is cancelled (closing its iterator).
Reasoning and tool calls are read from the text on the way (output_parsing).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from splitserve.common.request_telemetry import TrackedRequest
from splitserve.link.types import FinishReason, GenerationChunk
from splitserve.tokenizer.detokenizer import IncrementalDetokenizer
from splitserve.tokenizer.generator_pool import TokenGenerator
from splitserve.tokenizer.output_parsing import OutputParsers, merge
from splitserve.tokenizer.reasoning import prompt_opens_reasoning
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import ParsedText, TextChunk, TextFinishReason, TextRequest, TextToken

_FINISH = {
    FinishReason.LENGTH: TextFinishReason.LENGTH,
    FinishReason.EOS_TOKEN: TextFinishReason.EOS_TOKEN,
    FinishReason.STOP_TOKEN: TextFinishReason.STOP_TOKEN,
    FinishReason.CANCELLED: TextFinishReason.CANCELLED,
}
# An answer of tool calls ends with TOOL_CALLS unless it was cut short (length, cancel).
_CALLS_END = (TextFinishReason.EOS_TOKEN, TextFinishReason.STOP_TOKEN, TextFinishReason.STOP_SEQUENCE)
REASONING_PROMPT_TAIL_TOKENS = 8  # enough of the prompt's end to see whether it opens the reasoning


class _Decoding:
    """Per-request text state: detokenizer, output parsers (stop strings among them) and token count."""

    def __init__(self, codec: TextCodec, request: TextRequest) -> None:
        self.request = request
        prompt = request.generation.prompt_token_ids
        self.detok = IncrementalDetokenizer(codec.tokenizer, prompt, request.skip_special_tokens)
        opens = (request.parsing.reasoning_parser != "none"
                 and prompt_opens_reasoning(codec.decode(prompt[-REASONING_PROMPT_TAIL_TOKENS:], False)))
        self.parsers = OutputParsers(request.parsing, request.stop, opens)
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


async def generate_text(codec: TextCodec, generator: TokenGenerator, request: TextRequest, timeout: float | None,
                        tracked: TrackedRequest | None = None) -> AsyncGenerator[TextChunk, None]:
    """Streams text chunks for one request; the last chunk carries finish reason and usage."""
    state = _Decoding(codec, request)
    stream = generator.generate(request.generation, timeout)
    if tracked is not None:  # times tokens as they arrive from the generator, before stop-string hold-back
        stream = tracked.observe(stream, None, "detokenize")
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            text, tokens = state.decode(chunk)
            parsed, matched = state.parsers.feed(text)
            if matched is not None:  # leaving the block closes the generator stream
                parsed = merge(parsed, state.parsers.finish_after_stop())
            elif chunk.finish_reason is not None:
                rest, matched = state.parsers.finish()
                parsed = merge(parsed, rest)
            elif parsed.content or parsed.reasoning or parsed.tool_calls or tokens:
                yield TextChunk(parsed.content, tokens, reasoning=parsed.reasoning, tool_calls=parsed.tool_calls)
                continue
            else:
                continue
            yield _last(state, chunk, parsed, tokens, matched)
            return


def _last(state: _Decoding, chunk: GenerationChunk, parsed: ParsedText, tokens: list[TextToken],
          matched: str | None) -> TextChunk:
    """The final chunk: finish reason (a stop string's, the engine's, or TOOL_CALLS), usage, parse error."""
    generation, parsers = state.request.generation, state.parsers
    if matched is not None:
        reason, seed, stop_token_id = TextFinishReason.STOP_SEQUENCE, generation.sampling.seed, None
    else:
        assert chunk.finish_reason is not None
        reason, seed, stop_token_id = _FINISH[chunk.finish_reason], chunk.seed, chunk.stop_token_id
    if parsers.num_tool_calls and not parsers.tool_parse_error and reason in _CALLS_END:
        reason = TextFinishReason.TOOL_CALLS
    return TextChunk(parsed.content, tokens, reason, matched or "", stop_token_id,
                     len(generation.prompt_token_ids), state.completion_tokens, seed,
                     chunk.num_cached_prompt_tokens,  # known when a stop matched in the last chunk
                     parsed.reasoning, parsed.tool_calls, parsers.tool_parse_error, parsers.void_tool_call)
