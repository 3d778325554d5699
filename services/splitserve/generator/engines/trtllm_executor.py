"""Engine "trtllm-engine": a prebuilt TensorRT-LLM engine dir (TensorRT-LLM <= 1.2, `trtllm-build`).

The engine's build limits (config.json, build_config) are its hard limits: they are reported in
model info and requests beyond them are refused up front. Serving uses the Executor behind
ModelRunnerCpp (in-flight batching); builds that only have the Python ModelRunner fall back to
static batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Protocol

from splitserve.common.errors import EngineUnavailable
from splitserve.generator.engine import HealthListener
from splitserve.generator.engines.trtllm_common import (
    Admission,
    ModelFacts,
    import_trtllm,
    read_model_facts,
    require_tensorrt_llm,
)
from splitserve.generator.engines.trtllm_limits import check_request, read_engine_limits
from splitserve.generator.engines.trtllm_versions import installed_version
from splitserve.link.types import (
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    GenerationChunk,
    GenerationRequest,
)

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)


class _Backend(Protocol):
    capabilities: EngineCapabilities

    async def start(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]: ...

    async def stop(self) -> None: ...


class TrtllmEngineDirEngine:
    """A prebuilt engine dir behind the engine interface."""

    def __init__(self, config: GeneratorConfig, on_health: HealthListener) -> None:
        require_tensorrt_llm()
        if not config.engine_dir:
            raise ValueError("--engine trtllm-engine needs --engine-dir (build one with `splitserve build-engine`)")
        self._config = config
        self._on_health = on_health
        self._limits = read_engine_limits(config.engine_dir)
        self._facts: ModelFacts | None = None
        self._backend: _Backend | None = None
        self._version = "unknown"
        self._admission = Admission(self._limits.max_batch_size, config.max_queued_requests)

    @property
    def info(self) -> EngineInfo:
        if self._facts is None or self._backend is None:
            raise RuntimeError("engine not started")
        cfg, limits = self._config, self._limits
        max_new = min(cfg.max_new_tokens, limits.max_seq_len - 1)
        return EngineInfo(
            model_name=cfg.model_name, engine="trtllm-engine",
            vocab_size=min(self._facts.vocab_size, limits.vocab_size or self._facts.vocab_size),
            eos_token_ids=self._facts.eos_token_ids,
            max_input_tokens=limits.max_input_len, max_total_tokens=limits.max_seq_len,
            max_new_tokens=max_new, default_max_new_tokens=min(cfg.default_max_new_tokens, max_new),
            max_batch_size=limits.max_batch_size, capabilities=self._backend.capabilities,
            engine_version=f"TensorRT-LLM {self._version}",
        )

    async def start(self) -> None:
        self._facts = await asyncio.to_thread(read_model_facts, self._config.model_path)
        self._version = installed_version(import_trtllm("tensorrt_llm"))
        self._backend = self._choose_backend(self._facts)
        await self._backend.start()
        warm = GenerationRequest("warm-up", [self._facts.end_id], max_new_tokens=2)
        async for _ in self.generate(warm):
            pass

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if self._backend is None:
            raise EngineUnavailable("engine is not running")
        check_request(request, self._limits)  # the runtime's own check would fail later, less clearly
        self._admission.enter()
        try:
            # aclosing: closing our stream must close the backend's at once, which cancels the request
            async with contextlib.aclosing(self._backend.generate(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self._admission.leave()

    def load(self) -> EngineLoad:
        in_flight, batch = self._admission.in_flight, self._limits.max_batch_size
        return EngineLoad(queued_requests=max(0, in_flight - batch), running_requests=min(in_flight, batch),
                          cache_utilization=min(1.0, in_flight / batch), max_batch_size=batch)

    async def stop(self) -> None:
        if self._backend is not None:
            await self._backend.stop()

    def _choose_backend(self, facts: ModelFacts) -> _Backend:
        runtime = import_trtllm("tensorrt_llm.runtime")
        if getattr(runtime, "ModelRunnerCpp", None) is not None:
            from splitserve.generator.engines.trtllm_inflight import ExecutorBackend

            return ExecutorBackend(self._config, facts, self._on_health)
        log.warning("ModelRunnerCpp is unavailable in this TensorRT-LLM build: falling back to the Python "
                    "ModelRunner with static batches (no in-flight batching)")
        from splitserve.generator.engines.trtllm_static import StaticBatchBackend

        return StaticBatchBackend(self._config, facts, self._limits)
