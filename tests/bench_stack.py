"""Both tiers in-process over the benchmark engine (no weights; pacing only), with chosen settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.server import GeneratorServer, start_generator
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import TokenizerServer, start_tokenizer

# A request of max_new_tokens=1000 lasts ~4 s at the bench engine's modelled 4 ms step.
BENCH_GENERATOR = {"engine": "bench", "max_batch_size": 8, "max_queued_requests": 8, "max_total_tokens": 2048,
                   "max_input_tokens": 1024, "max_new_tokens": 1024, "default_max_new_tokens": 16,
                   "kv_cache_tokens": 16384}


@dataclass
class BenchStack:
    """Both tiers and plaintext stubs to reach them."""

    generator: GeneratorServer
    tokenizer: TokenizerServer
    text: text_pb2_grpc.TextGenerationServiceStub
    tokens: tokens_pb2_grpc.TokenGenerationServiceStub

    @property
    def public_address(self) -> str:
        return f"127.0.0.1:{self.tokenizer.port}"

    @property
    def http_url(self) -> str:
        """The OpenAI-compatible API's base URL (the tokenizer must have been started with an http_address)."""
        return f"http://127.0.0.1:{self.tokenizer.http_port}/v1"

    @property
    def generator_address(self) -> str:
        return f"127.0.0.1:{self.generator.port}"


@contextlib.asynccontextmanager
async def bench_stack(model_dir: Path, generator: dict[str, Any] | None = None,
                      tokenizer: dict[str, Any] | None = None) -> AsyncIterator[BenchStack]:
    """Starts generator then tokenizer (plaintext unless TLS settings are given); stops both."""
    gen_config = GeneratorConfig(str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", grace_seconds=1,
                                 **{**BENCH_GENERATOR, **(generator or {})})
    gen = await start_generator(gen_config)
    try:
        tok = await start_tokenizer(TokenizerConfig(
            str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", generator_address=f"127.0.0.1:{gen.port}",
            generator_wait_seconds=30, grace_seconds=1, **(tokenizer or {})))
    except BaseException:
        await gen.stop(0)
        raise
    text_channel = grpc.aio.insecure_channel(f"127.0.0.1:{tok.port}")
    tokens_channel = grpc.aio.insecure_channel(f"127.0.0.1:{gen.port}")
    try:
        yield BenchStack(gen, tok, text_pb2_grpc.TextGenerationServiceStub(text_channel),
                         tokens_pb2_grpc.TokenGenerationServiceStub(tokens_channel))
    finally:
        await text_channel.close()
        await tokens_channel.close()
        await tok.stop(0)
        await gen.stop(0)
