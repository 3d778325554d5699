"""Shared fixtures: both tiers in-process on loopback ports with the real default model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.model_store import DEFAULT_MODEL_NAME, default_cache_dir, ensure_default_model
from splitserve.common.telemetry import Telemetry, TelemetrySettings
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.server import start_generator
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import start_tokenizer

from .bench_stack import BenchStack

# Small limits so the limit errors are cheap to reach.
TEST_LIMITS = {"max_batch_size": 8, "max_total_tokens": 1024, "max_input_tokens": 768, "max_new_tokens": 256,
               "default_max_new_tokens": 32, "kv_cache_tokens": 8192}


@dataclass
class Stack(BenchStack):
    """Both tiers running in this process on the real model, stubs to reach them, and their spans."""

    spans: InMemorySpanExporter  # finished spans of both tiers (tell them apart by service.name)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return ensure_default_model(default_cache_dir())


# Set from the command line (pytest --generator-dtype float32): a CUDA run checks parity in float32.
GENERATOR_OPTIONS: dict[str, object] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--generator-dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                     help="dtype of the generators the tests start (default: the engine's auto)")


def pytest_configure(config: pytest.Config) -> None:
    dtype = config.getoption("--generator-dtype")
    if dtype:
        GENERATOR_OPTIONS["dtype"] = dtype


def generator_config(model_dir: Path, **overrides: object) -> GeneratorConfig:
    settings = {**TEST_LIMITS, **GENERATOR_OPTIONS, **overrides}
    return GeneratorConfig(str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", grace_seconds=2,
                           **settings)  # type: ignore[arg-type]


def traced(service_name: str, spans: InMemorySpanExporter) -> Telemetry:
    """Tracing into `spans` (exported as each span ends) and a metrics endpoint on a free port."""
    return Telemetry.create(TelemetrySettings(service_name, metrics_port=0), [SimpleSpanProcessor(spans)])


@pytest.fixture(scope="session")
async def stack(model_dir: Path) -> AsyncIterator[Stack]:
    spans = InMemorySpanExporter()
    generator = await start_generator(generator_config(model_dir), traced("splitserve-generator", spans))
    try:
        tokenizer = await start_tokenizer(TokenizerConfig(
            str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0", http_address="127.0.0.1:0",
            generator_address=f"127.0.0.1:{generator.port}", generator_wait_seconds=60, grace_seconds=2),
            traced("splitserve-tokenizer", spans))
    except BaseException:
        await generator.stop(0)  # the engine thread is not a daemon: never leave it running
        raise
    text_channel = grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer.port}")
    tokens_channel = grpc.aio.insecure_channel(f"127.0.0.1:{generator.port}")
    yield Stack(generator, tokenizer, text_pb2_grpc.TextGenerationServiceStub(text_channel),
                tokens_pb2_grpc.TokenGenerationServiceStub(tokens_channel), spans)
    await text_channel.close()
    await tokens_channel.close()
    await tokenizer.stop(1)
    await generator.stop(1)
