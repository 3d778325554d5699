"""The one interface every generation engine implements, and the factory that picks one.

An engine takes validated token-level requests and streams `GenerationChunk`s. Closing the stream
early (the consumer stops iterating, `aclose()`, or task cancellation) aborts the request and frees
its batch slot and cache.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from splitserve.common.errors import RequestError
from splitserve.link.types import EngineInfo, EngineLoad, GenerationChunk, GenerationRequest

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

ENGINE_NAMES = ("native", "transformers", "trtllm", "trtllm-engine", "bench")
OLD_ENGINE_NAMES = {"torch": "transformers"}  # still accepted


class Engine(Protocol):
    """A generation engine: start, stream tokens for requests, report load, stop."""

    @property
    def info(self) -> EngineInfo: ...

    async def start(self) -> None:
        """Loads the model and warms up; the engine serves once this returns."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Streams chunks for an already validated request; closing the iterator aborts it."""

    def load(self) -> EngineLoad:
        """Current queue depth, running requests and cache use."""

    async def stop(self) -> None:
        """Aborts what is in flight and releases the device."""


# Receives a stream's outputs on the event loop: its chunks in order, then nothing after the last
# chunk (finish_reason set) or the error that ended it.
Deliver = Callable[[GenerationChunk | RequestError], None]


@runtime_checkable
class DirectStreams(Protocol):
    """An engine that can hand a stream's outputs to a callback, without a task or iterator per stream.

    The engine process uses it: there, per-token asyncio work in front of the engine is pure cost.
    """

    def open_stream(self, request: GenerationRequest, deliver: Deliver) -> Callable[[], None]:
        """Starts the request (raising RequestError if it cannot) and returns the function that aborts it."""


# Called with False when the engine becomes unable to serve (e.g. its loop crashed), True when back.
HealthListener = Callable[[bool], None]


def create_engine(config: GeneratorConfig, on_health: HealthListener) -> Engine:
    """Builds the engine named by `config.engine`; heavy imports happen only for the chosen one."""
    if config.engine_process:
        from splitserve.generator.engine_process import EngineProcess

        return EngineProcess(config, on_health)
    if config.engine == "native":
        from splitserve.generator.engines.native.engine import NativeEngine

        return NativeEngine(config, on_health)
    if config.engine in ("transformers", "torch"):
        from splitserve.generator.engines.transformers_engine import TransformersEngine

        return TransformersEngine(config, on_health)
    if config.engine == "trtllm":
        from splitserve.generator.engines.trtllm_llmapi import TrtllmLlmApiEngine

        return TrtllmLlmApiEngine(config, on_health)
    if config.engine == "trtllm-engine":
        from splitserve.generator.engines.trtllm_executor import TrtllmEngineDirEngine

        return TrtllmEngineDirEngine(config, on_health)
    if config.engine == "bench":
        from splitserve.generator.engines.bench_engine import BenchEngine

        return BenchEngine(config, on_health)
    raise ValueError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
