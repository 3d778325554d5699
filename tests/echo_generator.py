"""A stand-in generator replica (no engine, no process) that answers with the last user turn's text.

It makes the model's output a test's choice, so tool calls and reasoning can be sent through the real
tokenizer tier over gRPC: the echoed text is tokenized with the real tokenizer and streamed back one
token per message, ending with EOS (or LENGTH at the request's max_new_tokens).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from splitserve.link.types import (
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GeneratorInfo,
    TokenOutput,
)
from splitserve.tokenizer.text_codec import TextCodec

USER_TURN, END_TURN = "<|im_start|>user\n", "<|im_end|>"


class EchoGeneratorClient:
    """Answers probes like a serving replica of `codec`'s model; streams the echo of the prompt."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec

    async def is_serving(self, timeout: float) -> bool:
        return True

    async def model_info(self, timeout: float) -> GeneratorInfo:
        info = EngineInfo("echo", "echo", vocab_size=len(self.codec.tokenizer), eos_token_ids=(2,),
                          max_input_tokens=3072, max_total_tokens=4096, max_new_tokens=512,
                          default_max_new_tokens=256, max_batch_size=8, capabilities=EngineCapabilities())
        return GeneratorInfo(info, self.codec.fingerprint)

    async def load(self, timeout: float = 5.0) -> EngineLoad:
        return EngineLoad(0, 0, 0.0, 8)

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        ids = self.codec.encode_text(self.echo(request.prompt_token_ids))
        limit = request.max_new_tokens or len(ids)
        for token in ids[:limit]:
            yield GenerationChunk([TokenOutput(token)])
        reason, stop = (FinishReason.LENGTH, None) if limit < len(ids) else (FinishReason.EOS_TOKEN, 2)
        yield GenerationChunk([], reason, stop, len(request.prompt_token_ids), min(limit, len(ids)))

    def echo(self, prompt_ids: list[int]) -> str:
        prompt = self.codec.decode(prompt_ids, skip_special_tokens=False)
        return prompt.rsplit(USER_TURN, 1)[-1].split(END_TURN, 1)[0]

    async def close(self) -> None:
        pass
