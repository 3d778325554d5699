"""The portable engine: transformers' continuous batching on CPU or any CUDA GPU.

One background thread (transformers' generation loop) owns the device; asyncio owns the network.
Outputs reach per-request asyncio queues through `loop.call_soon_threadsafe` (the manager's
result handlers). The sharp edges of the manager are handled here:
- the cache is sized explicitly (else it takes most of RAM on CPU);
- handlers are registered before `add_request`; a cancelled request gets no final output and its
  handler stays registered, so we remove it and end the stream ourselves;
- temperature/top_k/top_p are passed per request (greedy is top_k=1) because `do_sample` is global;
- one bad request kills the loop for everyone: requests are validated before they get here, and a
  supervisor fails in-flight requests as UNAVAILABLE and restarts the loop if it dies anyway;
- the loop thread is not a daemon: `stop()` always stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from splitserve.common.errors import EngineUnavailable, Overloaded
from splitserve.generator.engine import HealthListener
from splitserve.generator.engines.transformers_loading import LoadedModel, load_model
from splitserve.generator.finish import stop_reason
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

SUPERVISE_INTERVAL_S = 0.2


@dataclass
class _Stream:
    """Book-keeping of one in-flight request."""

    queue: asyncio.Queue[Any]
    num_prompt_tokens: int
    num_generated: int = 0


class TransformersEngine:
    """transformers continuous batching behind the engine interface."""

    def __init__(self, config: GeneratorConfig, on_health: HealthListener) -> None:
        self._config = config
        self._on_health = on_health
        self._loaded: LoadedModel | None = None
        self._manager: Any = None
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def info(self) -> EngineInfo:
        if self._loaded is None:
            raise RuntimeError("engine not started")
        loaded = self._loaded
        return self._config.engine_info("transformers", loaded.vocab_size, loaded.eos_token_ids,
                                        EngineCapabilities(logprobs=True))

    async def start(self) -> None:
        self._loaded = await asyncio.to_thread(load_model, self._config)
        await asyncio.to_thread(self._start_manager)
        await self._warm_up()
        self._supervisor = asyncio.create_task(self._supervise(), name="torch-engine-supervisor")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self._admit()
        rid = f"{request.request_id}#{next(self._ids)}"  # unique even when clients reuse ids
        stream = _Stream(asyncio.Queue(), len(request.prompt_token_ids))
        manager = self._manager
        self._streams[rid] = stream
        manager.register_result_handler(rid, stream.queue.put_nowait)  # before add_request
        finished = False
        try:
            if manager.add_request(request.prompt_token_ids, request_id=rid, streaming=True,
                                   **self._request_kwargs(request)) is None:
                raise EngineUnavailable("engine is not accepting requests (restarting or stopping)")
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                chunk = self._to_chunk(item, stream, request)
                finished = chunk.finish_reason is not None
                if chunk.tokens or finished:
                    yield chunk
        finally:
            self._streams.pop(rid, None)
            if not finished:
                self._abort(manager, rid)

    def load(self) -> EngineLoad:
        scheduler = getattr(getattr(self._manager, "batch_processor", None), "scheduler", None)
        running = len(scheduler.active_requests) if scheduler is not None else 0
        waiting = len(scheduler.waiting_requests) if scheduler is not None else 0
        queued = waiting + (self._manager.input_queue.qsize() if self._manager is not None else 0)
        held = sum(s.num_prompt_tokens + s.num_generated for s in self._streams.values())
        return EngineLoad(queued_requests=queued, running_requests=running,
                          cache_utilization=min(1.0, held / self._config.kv_cache_tokens),
                          max_batch_size=self._config.max_batch_size)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._fail_streams(EngineUnavailable("generator is shutting down"))
        if self._manager is not None:
            await asyncio.to_thread(self._manager.stop, block=True, timeout=30, hard_stop=True)

    # -- requests -----------------------------------------------------------------------------------

    def _admit(self) -> None:
        limit = self._config.max_batch_size + self._config.max_queued_requests
        if len(self._streams) >= limit:
            raise Overloaded(f"generator queue is full ({limit} requests in flight); retry later")

    def _request_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        assert self._loaded is not None
        stops = list(request.stop_token_ids)
        eos = stops if request.ignore_eos else [*self._loaded.eos_token_ids, *stops]
        sampling = request.sampling
        if sampling.is_greedy:
            knobs: dict[str, Any] = {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        else:
            knobs = {"temperature": float(sampling.temperature or 1.0),
                     "top_k": int(sampling.top_k or self._loaded.vocab_size),
                     "top_p": float(sampling.top_p or 1.0)}
        return {"max_new_tokens": request.max_new_tokens, "eos_token_id": eos or -1, **knobs}

    def _to_chunk(self, output: Any, stream: _Stream, request: GenerationRequest) -> GenerationChunk:
        if output.error is not None:
            raise EngineUnavailable(f"engine failed the request: {output.error}")
        new_ids = output.generated_tokens[stream.num_generated:]
        logprobs = output.logprobs[stream.num_generated:] if request.logprobs else []
        tokens = [TokenOutput(tid, float(logprobs[i]) if i < len(logprobs) else None)
                  for i, tid in enumerate(new_ids)]
        stream.num_generated += len(new_ids)
        if not output.is_finished():
            return GenerationChunk(tokens)
        reason, stop_id = self._finish_reason(output.generated_tokens, request)
        return GenerationChunk(tokens, reason, stop_id, stream.num_prompt_tokens, stream.num_generated,
                               request.sampling.seed)

    def _finish_reason(self, generated: list[int], request: GenerationRequest) -> tuple[FinishReason, int | None]:
        assert self._loaded is not None
        return stop_reason(generated[-1] if generated else None, request, self._loaded.eos_token_ids,
                           FinishReason.LENGTH)

    def _abort(self, manager: Any, rid: str) -> None:
        """Cancels in the engine and drops the handler, which transformers keeps for cancelled requests."""
        manager.cancel_request(rid)
        router = manager.output_router
        with router._lock:
            router.result_handlers.pop(rid, None)

    # -- the generation loop ------------------------------------------------------------------------

    def _start_manager(self) -> None:
        assert self._loaded is not None
        self._manager = self._loaded.new_manager(self._config)
        self._manager.start()

    async def _warm_up(self) -> None:
        warm = GenerationRequest("warm-up", [self._loaded.eos_token_ids[0] if self._loaded else 0],
                                 max_new_tokens=2)
        async for _ in self.generate(warm):
            pass

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            if self._manager.is_running() or self._stopping:
                continue
            error = self._manager.background_thread_status.fatal_error
            log.error("generation loop died (%s); failing in-flight requests and restarting", error)
            self._on_health(False)
            self._fail_streams(EngineUnavailable(f"engine loop crashed ({error}); request aborted, retry"))
            await asyncio.to_thread(self._restart_manager)
            self.restarts += 1
            self._on_health(True)

    def _restart_manager(self) -> None:
        with contextlib.suppress(Exception):  # the dead loop's manager only needs its state released
            self._manager.stop(block=True, timeout=5)
        self._start_manager()

    def _fail_streams(self, error: Exception) -> None:
        for stream in self._streams.values():
            stream.queue.put_nowait(error)
