"""In-flight batching on a prebuilt engine through ModelRunnerCpp's Executor (TensorRT-LLM <= 1.2).

`ModelRunnerCpp.generate` must not be called concurrently (it awaits responses without ids, so
calls steal each other's), hence requests go to its Executor directly: `enqueue_request` returns an
id, one ResponsePoller thread routes responses by id, and `cancel_request` frees the slot when our
stream closes early.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from splitserve.common.errors import EngineUnavailable, InvalidRequest
from splitserve.generator.engine import HealthListener
from splitserve.generator.engines.trtllm_common import (
    ModelFacts,
    StreamState,
    end_and_stop_ids,
    import_trtllm,
    stop_reason_of,
)
from splitserve.generator.engines.trtllm_limits import limit_error
from splitserve.generator.engines.trtllm_mpi import mpi_rank
from splitserve.generator.engines.trtllm_poller import ResponsePoller
from splitserve.generator.engines.trtllm_sampling import executor_kwargs
from splitserve.link.types import (
    EngineCapabilities,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenOutput,
)

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)

_FINISH_NAMES = {"LENGTH": FinishReason.LENGTH, "CANCELLED": FinishReason.CANCELLED,
                 "TIMED_OUT": FinishReason.CANCELLED, "NOT_FINISHED": FinishReason.LENGTH}


def runner_executor(runner: Any) -> Any:
    """The Executor a ModelRunnerCpp wraps: 1.2.1 keeps it in `.session` and has no `.executor` attribute."""
    return runner.session


def load_runner(config: GeneratorConfig, rank: int) -> Any:
    """ModelRunnerCpp on this rank's GPU; every rank of a tensor-parallel engine must load it."""
    runtime = import_trtllm("tensorrt_llm.runtime")
    return runtime.ModelRunnerCpp.from_dir(
        engine_dir=config.engine_dir, rank=rank,
        kv_cache_free_gpu_memory_fraction=config.kv_cache_free_gpu_memory_fraction,
        kv_cache_enable_block_reuse=False, enable_chunked_context=False,
    )


class ExecutorBackend:
    """Streams requests through the Executor with in-flight batching."""

    capabilities = EngineCapabilities(seed=True, repetition_penalty=True, min_new_tokens=True, logprobs=True)

    def __init__(self, config: GeneratorConfig, facts: ModelFacts, on_health: HealthListener) -> None:
        self._config = config
        self._facts = facts
        self._on_health = on_health
        self._runner: Any = None  # keeps the Executor alive
        self._executor: Any = None
        self._bindings: Any = None
        self._poller: ResponsePoller | None = None

    async def start(self) -> None:
        self._runner = await asyncio.to_thread(load_runner, self._config, mpi_rank())
        self._executor = runner_executor(self._runner)
        self._bindings = import_trtllm("tensorrt_llm.bindings.executor")
        self._poller = ResponsePoller(self._executor, asyncio.get_running_loop(), self._failed)
        self._poller.start()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        assert self._poller is not None
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self._poller.registering() as register:
            request_id = self._enqueue(request)
            register(request_id, queue)
        state, finished = StreamState(request), False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                chunk = self._to_chunk(item, state)
                finished = chunk.finish_reason is not None
                if chunk.tokens or finished:
                    yield chunk
        finally:
            self._poller.unregister(request_id)
            if not finished:
                self._executor.cancel_request(request_id)  # frees the batch slot and KV cache

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.fail_all(EngineUnavailable("generator is shutting down"))
            self._poller.stop()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown)  # also releases the other MPI ranks
            self._executor = None

    def _enqueue(self, request: GenerationRequest) -> int:
        if self._executor is None:
            raise EngineUnavailable("engine is not running")
        try:
            return int(self._executor.enqueue_request(self._to_request(request)))
        except Exception as error:
            raise limit_error(error) or InvalidRequest(f"TensorRT-LLM refused the request: {error}") from error

    def _to_request(self, request: GenerationRequest) -> Any:
        b = self._bindings
        end_id, stops = end_and_stop_ids(request, self._facts)
        return b.Request(
            request.prompt_token_ids, request.max_new_tokens, streaming=True,
            sampling_config=b.SamplingConfig(1, **executor_kwargs(request.sampling, request.min_new_tokens)),
            output_config=b.OutputConfig(return_log_probs=request.logprobs, exclude_input_from_output=True),
            end_id=end_id, pad_id=self._facts.pad_token_id, stop_words=[[t] for t in stops] or None,
        )

    def _to_chunk(self, response: Any, state: StreamState) -> GenerationChunk:
        if response.has_error():
            message = response.error_msg
            raise limit_error(RuntimeError(message)) or EngineUnavailable(f"engine failed the request: {message}")
        result = response.result
        new_ids = [int(t) for t in result.output_token_ids[0]]  # streaming: new tokens of beam 0
        logprobs = list(result.log_probs[0]) if state.request.logprobs and result.log_probs else []
        tokens = [TokenOutput(t, float(logprobs[i]) if i < len(logprobs) else None)
                  for i, t in enumerate(new_ids)]
        if not result.is_final:
            return state.chunk(tokens)
        reason, stop_id = self._finish(result.finish_reasons[0], tokens, state)
        return state.final(tokens, reason, stop_id)

    def _finish(self, reason: Any, tokens: list[TokenOutput], state: StreamState,
                ) -> tuple[FinishReason, int | None]:
        name = getattr(reason, "name", str(reason)).rsplit(".", 1)[-1]
        if name == "END_ID":
            return FinishReason.EOS_TOKEN, self._facts.end_id  # the executor leaves end_id out
        if name == "STOP_WORDS":
            last = tokens[-1].token_id if tokens else state.last_token
            return stop_reason_of(last, state.request, self._facts)
        return _FINISH_NAMES.get(name, FinishReason.LENGTH), None

    def _failed(self, error: BaseException) -> None:
        self._on_health(False)
