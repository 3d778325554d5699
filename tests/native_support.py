"""Helpers for the native engine's tests: start an engine on the default model, run requests through it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.generator.validation import validate_request
from splitserve.link.types import GenerationChunk, GenerationRequest, SamplingParams, TokenOutput

from .conftest import generator_config

# Token ids of short English prompts in the default model's vocabulary (fixed, so no tokenizer is needed).
PROMPTS = [
    [504, 3458, 282, 4649, 314],
    [19556, 253, 1165, 16096, 563, 260, 3724, 30],
    [1780, 1208, 2010, 314, 253, 1230, 28, 1205, 2367],
    [14753, 260, 1834, 4288, 28, 260, 4829, 1059],
    [378, 1093, 1208, 1539, 3276, 302, 6053],
    [8491, 1357, 314, 2032, 30, 378, 1562, 314],
    [20106, 2014, 216, 33, 216, 34, 216, 35, 216],
    [1095, 1116, 282, 260, 2117, 3111, 314],
]


@dataclass
class Result:
    """What one request produced."""

    tokens: list[TokenOutput] = field(default_factory=list)
    final: GenerationChunk | None = None

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]


def write_split_llama(folder: Path, tokenizer_dir: Path) -> Path:
    """A small random fp32 Llama whose heads (4), KV heads (2) and MLP split two ways (the default model's 9
    heads and 3 KV heads do not), with the default model's tokenizer. Logits of a few units: 1e-5 is tens of
    fp32 ulps, so TP=2 and TP=1 have no near-ties between them."""
    config = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         initializer_range=0.05, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@asynccontextmanager
async def native_engine(model_dir: Path, **overrides: object) -> AsyncIterator[NativeEngine]:
    settings: dict[str, object] = {"engine": "native", "kv_page_size": 16, **overrides}
    engine = NativeEngine(generator_config(model_dir, **settings), lambda serving: None)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def run(engine: NativeEngine, prompt: list[int], max_new_tokens: int = 16, **fields: object) -> Result:
    sampling = fields.pop("sampling", SamplingParams())
    request = validate_request(GenerationRequest("test", list(prompt), sampling=sampling,  # type: ignore[arg-type]
                                                 max_new_tokens=max_new_tokens, **fields), engine.info)  # type: ignore[arg-type]
    result = Result()
    async for chunk in engine.generate(request):
        result.tokens.extend(chunk.tokens)
        if chunk.finish_reason is not None:
            result.final = chunk
    return result
