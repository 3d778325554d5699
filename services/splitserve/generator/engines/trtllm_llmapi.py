"""Engine "trtllm": TensorRT-LLM's LLM API (1.x) on a Hugging Face checkpoint, with in-flight batching.

TensorRT-LLM runs without its tokenizer (`skip_tokenizer_init=True`, `detokenize=False`): the
tokenizer tier owns text, so end/pad ids come from the model folder. Facts this adapter relies on:
- `generate_async(..., streaming=True)` yields outputs whose `token_ids_diff` may hold several tokens;
- leaving the `async for` does not abort the request: `abort()` is called when our stream closes;
- failures surface as ValueError (bad params), RequestError (a prompt over max_num_tokens, or one
  request failed in the engine: trtllm_errors.py tells them apart) and RuntimeError("LLM is shutting down");
- what its sampler honours depends on the release (trtllm_versions.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from splitserve.common.errors import EngineUnavailable, RequestError
from splitserve.generator.engine import HealthListener
from splitserve.generator.engines.trtllm_common import (
    Admission,
    ModelFacts,
    StreamState,
    import_trtllm,
    read_model_facts,
    require_tensorrt_llm,
    stop_reason_of,
)
from splitserve.generator.engines.trtllm_errors import is_engine_fault, llmapi_error
from splitserve.generator.engines.trtllm_sampling import guided_decoding_kwargs, llmapi_kwargs
from splitserve.generator.engines.trtllm_versions import installed_version, llmapi_capabilities
from splitserve.link.types import (
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenOutput,
)

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)


class TrtllmLlmApiEngine:
    """TensorRT-LLM's LLM API behind the engine interface."""

    def __init__(self, config: GeneratorConfig, on_health: HealthListener) -> None:
        require_tensorrt_llm()
        self._config = config
        self._on_health = on_health
        self._facts: ModelFacts | None = None
        self._llmapi: ModuleType | None = None
        self._llm: Any = None
        self._version = "unknown"
        self._capabilities = EngineCapabilities()
        self._admission = Admission(config.max_batch_size, config.max_queued_requests)
        self._held_tokens = 0

    @property
    def info(self) -> EngineInfo:
        if self._facts is None:
            raise RuntimeError("engine not started")
        return self._config.engine_info("trtllm", self._facts.vocab_size, self._facts.eos_token_ids,
                                        self._capabilities, f"TensorRT-LLM {self._version}")

    async def start(self) -> None:
        self._facts = await asyncio.to_thread(read_model_facts, self._config.model_path)
        self._llmapi = import_trtllm("tensorrt_llm.llmapi")
        self._version = installed_version(import_trtllm("tensorrt_llm"))
        self._capabilities = dataclasses.replace(  # guides need the LLM built with a backend for them
            llmapi_capabilities(self._version), constrained_decoding=self._config.guided_decoding_backend is not None)
        self._llm = await asyncio.to_thread(self._create_llm, self._llmapi)
        warm = GenerationRequest("warm-up", [self._facts.end_id], max_new_tokens=2)
        async for _ in self.generate(warm):
            pass

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self._admission.enter()
        held = len(request.prompt_token_ids) + (request.max_new_tokens or 0)
        self._held_tokens += held
        finished = False
        result: Any = None
        try:
            result = self._submit(request)
            state, outputs = StreamState(request), result.__aiter__()
            while not finished:
                chunk = self._to_chunk(await self._next_output(outputs), state)
                finished = chunk.finish_reason is not None
                if chunk.tokens or finished:
                    yield chunk
        finally:
            if result is not None and not finished:
                result.abort()  # leaving the async-for alone would keep the request running
            self._held_tokens -= held
            self._admission.leave()

    def load(self) -> EngineLoad:
        cfg, in_flight = self._config, self._admission.in_flight
        capacity = cfg.max_batch_size * cfg.max_total_tokens
        return EngineLoad(queued_requests=max(0, in_flight - cfg.max_batch_size),
                          running_requests=min(in_flight, cfg.max_batch_size),
                          cache_utilization=min(1.0, self._held_tokens / capacity),
                          max_batch_size=cfg.max_batch_size)

    async def stop(self) -> None:
        if self._llm is not None:
            await asyncio.to_thread(self._llm.shutdown)
            self._llm = None

    # -- requests -----------------------------------------------------------------------------------

    def _create_llm(self, llmapi: ModuleType) -> Any:
        cfg = self._config
        log.info("loading %s with TensorRT-LLM's LLM API (tensor_parallel_size=%d)",
                 cfg.model_path, cfg.tensor_parallel_size)
        guided = {} if cfg.guided_decoding_backend is None else {"guided_decoding_backend": cfg.guided_decoding_backend}
        return llmapi.LLM(
            # The guided-decoding backends build their token tables from the LLM's tokenizer (the PyTorch
            # executor asserts one): keep it then. Text still never passes through TensorRT-LLM (detokenize=False).
            model=cfg.model_path, skip_tokenizer_init=not guided, tensor_parallel_size=cfg.tensor_parallel_size,
            dtype=cfg.dtype, max_batch_size=cfg.max_batch_size, max_seq_len=cfg.max_total_tokens,
            max_input_len=cfg.max_input_tokens,
            # chunked prefill is off: a prompt longer than max_num_tokens would be refused
            max_num_tokens=max(cfg.max_batch_tokens, cfg.max_input_tokens),
            kv_cache_config=llmapi.KvCacheConfig(
                free_gpu_memory_fraction=cfg.kv_cache_free_gpu_memory_fraction),
            **guided,
        )

    def _submit(self, request: GenerationRequest) -> Any:
        if self._llm is None or self._llmapi is None or self._facts is None:
            raise EngineUnavailable("engine is not running")
        try:
            kwargs = llmapi_kwargs(request, self._facts)
            if request.constraint is not None:
                kwargs["guided_decoding"] = self._llmapi.GuidedDecodingParams(
                    **guided_decoding_kwargs(request.constraint))
            params = self._llmapi.SamplingParams(**kwargs)
            return self._llm.generate_async(request.prompt_token_ids, sampling_params=params, streaming=True)
        except Exception as error:
            raise self._request_error(error) from error

    async def _next_output(self, outputs: AsyncIterator[Any]) -> Any:
        try:
            return await outputs.__anext__()
        except StopAsyncIteration:
            raise EngineUnavailable("engine ended the stream without a finish reason") from None
        except Exception as error:
            raise self._request_error(error) from error

    def _to_chunk(self, output: Any, state: StreamState) -> GenerationChunk:
        completion = output.outputs[0]
        new_ids = [int(t) for t in completion.token_ids_diff]
        logprobs = list(completion.logprobs_diff or []) if state.request.logprobs else []
        tokens = [TokenOutput(t, _logprob(logprobs, i, t)) for i, t in enumerate(new_ids)]
        if not output.finished:
            return state.chunk(tokens)
        reason, stop_id = self._finish(completion, state.request)
        return state.final(tokens, reason, stop_id)

    def _finish(self, completion: Any, request: GenerationRequest) -> tuple[FinishReason, int | None]:
        assert self._facts is not None
        if completion.finish_reason == "stop":
            if isinstance(completion.stop_reason, int):  # a stop token id, kept in the output
                return stop_reason_of(completion.stop_reason, request, self._facts)
            return FinishReason.EOS_TOKEN, self._facts.end_id  # end_id: not in the output
        if completion.finish_reason in ("cancelled", "timeout"):
            return FinishReason.CANCELLED, None
        return FinishReason.LENGTH, None

    def _request_error(self, error: Exception) -> RequestError:
        request_error = getattr(self._llmapi, "RequestError", None)
        if is_engine_fault(error, request_error):  # the LLM shuts itself down after these
            log.error("TensorRT-LLM failed outside any one request: %r", error)
            self._on_health(False)
        return llmapi_error(error, request_error)


def _logprob(logprobs: list[Any], index: int, token_id: int) -> float | None:
    """A token's logprob; 1.x gives {token_id: Logprob(logprob, rank)} per token, older lines a float."""
    if index >= len(logprobs):
        return None
    entry = logprobs[index]
    if isinstance(entry, dict):
        entry = entry.get(token_id)
        return None if entry is None else float(getattr(entry, "logprob", entry))
    return float(entry)
