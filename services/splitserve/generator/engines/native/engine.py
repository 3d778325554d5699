"""Engine "native": our paged-KV continuous-batching engine behind the generator's Engine protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import signal
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

from splitserve.common.errors import EngineUnavailable, InvalidRequest, Overloaded, RequestError
from splitserve.generator.engine import Deliver, HealthListener
from splitserve.generator.engines.model_folder import eos_ids_of_folder
from splitserve.generator.engines.native.constraints import ConstraintCompiler, ConstraintMatcher
from splitserve.generator.engines.native.direct_stream import DirectStream
from splitserve.generator.engines.native.loading import DeviceSide, build_device_side
from splitserve.generator.engines.native.sequence import SamplingOptions, Sequence
from splitserve.generator.engines.native.step_loop import Emitted, SchedulerLimits, StepLoop
from splitserve.generator.engines.native.tensor_parallel import (
    RankGroup,
    TensorParallelFailure,
    check_tensor_parallel,
)
from splitserve.generator.finish import stop_reason
from splitserve.link.types import (
    Constraint,
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    TokenOutput,
)

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
CAPABILITIES = EngineCapabilities(seed=True, repetition_penalty=True, presence_penalty=True, frequency_penalty=True,
                                  min_p=True, min_new_tokens=True, logprobs=True, max_top_logprobs=MAX_TOP_LOGPROBS,
                                  constrained_decoding=True)


def terminate_process() -> None:
    """The default end of a failed tensor-parallel group: SIGTERM ourselves, so the generator drains and exits."""
    signal.raise_signal(signal.SIGTERM)


class NativeEngine:
    """Paged KV cache, chunked prefill, prefix caching, CUDA graphs and full sampling in plain PyTorch.

    With tensor_parallel_size > 1 this process is rank 0 of a group of worker processes; if the group
    fails, every stream ends with UNAVAILABLE, health stays NOT_SERVING, `on_fatal` runs (by default the
    generator is sent SIGTERM) and `stop` raises TensorParallelFailure, so the process exits non-zero.
    """

    def __init__(self, config: GeneratorConfig, on_health: HealthListener,
                 on_fatal: Callable[[], None] = terminate_process) -> None:
        self._config = config
        self._on_health = on_health
        self._on_fatal = on_fatal
        self._group: RankGroup | None = None
        self._failure: str | None = None  # why the tensor-parallel group failed
        self._serving = False
        self._failing: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._device: DeviceSide | None = None
        self._loop_thread: StepLoop | None = None
        self._eos_ids: tuple[int, ...] = ()
        self._constraints: ConstraintCompiler | None = None
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._compiling: set[asyncio.Task[None]] = set()  # direct streams' constraints being compiled

    @property
    def info(self) -> EngineInfo:
        if self._device is None:
            raise RuntimeError("engine not started")
        capabilities = dataclasses.replace(CAPABILITIES, constrained_decoding=self._constraints is not None)
        return self._config.engine_info("native", self._device.config.vocab_size, self._eos_ids, capabilities)

    @property
    def restarts(self) -> int:
        return self._loop_thread.restarts if self._loop_thread is not None else 0

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._eos_ids = await asyncio.to_thread(eos_ids_of_folder, self._config.model_path)
        self._device = await asyncio.to_thread(self._build_device_side)
        await asyncio.to_thread(self._device.runner.capture_graphs)
        self._constraints = await asyncio.to_thread(self._constraint_compiler)
        cfg, device = self._config, self._device
        limits = SchedulerLimits(device.num_blocks, device.block_size, cfg.max_batch_size, cfg.max_batch_tokens,
                                 cfg.enable_prefix_caching)
        self._loop_thread = StepLoop(device.runner, limits, self._event_loop, self._report_health)
        self._loop_thread.start()
        try:
            await self._warm_up()
        except EngineUnavailable as error:
            if self._failure is not None:
                raise TensorParallelFailure(self._failure) from error
            raise
        self._serving = True

    async def _warm_up(self) -> None:
        for sampling in (SamplingParams(), SamplingParams(temperature=1.0, top_p=0.9, seed=0)):  # the latter compiles
            async for _ in self.generate(GenerationRequest("warm-up", [self._eos_ids[0]], sampling, max_new_tokens=2)):
                pass

    def _constraint_compiler(self) -> ConstraintCompiler | None:
        """None when the grammar library cannot take the model's tokenizer: the engine then serves unconstrained."""
        assert self._device is not None
        try:
            return ConstraintCompiler(self._config.model_path, self._device.config.vocab_size, self._eos_ids)
        except Exception:  # e.g. a model folder with only a slow (sentencepiece) tokenizer
            log.exception("native engine: structured output is off (the model's tokenizer cannot be used by %s)",
                          "llguidance")
            return None

    def _matcher(self, constraint: Constraint) -> ConstraintMatcher:
        if self._constraints is None:  # validation refuses it first (the capability is off)
            raise InvalidRequest("engine 'native' does not support constrained decoding with this model's tokenizer")
        return self._constraints.matcher(constraint)

    def _build_device_side(self) -> DeviceSide:
        """Rank 0's shard; under tensor parallelism the workers are started first and load theirs alongside."""
        if self._config.tensor_parallel_size == 1:
            return build_device_side(self._config)
        check_tensor_parallel(self._config)
        self._group = RankGroup.launch(self._config, self._group_failed)
        device = build_device_side(self._config, self._group.tp, self._group)
        self._group.wait_ready()
        return device

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        loop_thread = self._running_loop()
        self._admit()
        seq = self._sequence(request)
        if request.constraint is not None:  # compiled (or found cached) before the engine sees the request
            seq.constraint = await asyncio.to_thread(self._matcher, request.constraint)
        queue: asyncio.Queue[Emitted | BaseException] = asyncio.Queue()
        self._in_flight += 1
        finished = False
        try:
            loop_thread.submit(seq, queue.put_nowait)
            while not finished:
                tokens, finished = await _next_tokens(queue)
                if finished:
                    yield self._final_chunk(tokens, seq, request)
                else:
                    yield GenerationChunk(tokens)
        finally:
            self._in_flight -= 1
            if not finished:
                loop_thread.abort(seq.seq_id)

    def open_stream(self, request: GenerationRequest, deliver: Deliver) -> Callable[[], None]:
        """`generate` without a task per stream: each step's token reaches `deliver` straight from the hand-over."""
        loop_thread = self._running_loop()
        self._admit()
        seq = self._sequence(request)
        stream = DirectStream(seq, request, deliver, loop_thread.abort, self._stream_ended,
                              lambda tokens: self._final_chunk(tokens, seq, request))
        self._in_flight += 1
        if request.constraint is None:
            loop_thread.submit(stream.seq, stream.on_item)
        else:  # compiled off the event loop first, as in `generate`
            task = asyncio.get_running_loop().create_task(self._submit_constrained(stream, loop_thread))
            self._compiling.add(task)
            task.add_done_callback(self._compiling.discard)
        return stream.cancel

    async def _submit_constrained(self, stream: DirectStream, loop_thread: StepLoop) -> None:
        assert stream.request.constraint is not None
        try:
            stream.seq.constraint = await asyncio.to_thread(self._matcher, stream.request.constraint)
        except RequestError as error:
            stream.on_item(error)
            return
        if stream.is_open:  # not cancelled while it compiled
            loop_thread.submit(stream.seq, stream.on_item)

    def _stream_ended(self) -> None:
        self._in_flight -= 1

    def load(self) -> EngineLoad:
        loop_thread = self._loop_thread
        if loop_thread is None:
            return EngineLoad(0, 0, 0.0, self._config.max_batch_size)
        scheduler = loop_thread.scheduler
        return EngineLoad(queued_requests=scheduler.num_waiting + loop_thread.num_inbox,
                          running_requests=scheduler.num_running,
                          cache_utilization=scheduler.block_manager.usage, max_batch_size=self._config.max_batch_size)

    async def stop(self) -> None:
        if self._failing is not None:
            await self._failing
        await self._release(EngineUnavailable("generator is shutting down"))
        if self._failure is not None and self._serving:
            raise TensorParallelFailure(self._failure)

    async def _release(self, error: EngineUnavailable) -> None:
        """Stops the step loop (ending its streams with `error`), then the tensor-parallel workers."""
        loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is not None:
            await asyncio.to_thread(loop_thread.stop)
            loop_thread.fail_all(error)
        group, self._group = self._group, None
        if group is not None:
            await asyncio.to_thread(group.stop)

    # -- a failed tensor-parallel group -------------------------------------------------------------

    def _group_failed(self, reason: str) -> None:
        """Called once, from any thread, when a rank died or the ranks fell out of step."""
        assert self._event_loop is not None  # set before the group starts
        self._event_loop.call_soon_threadsafe(self._fail_for_good, reason)

    def _fail_for_good(self, reason: str) -> None:
        self._failure = reason
        self._on_health(False)
        if self._serving:  # while starting, start() raises instead
            self._failing = asyncio.get_running_loop().create_task(self._end_after_failure(reason))

    async def _end_after_failure(self, reason: str) -> None:
        log.error("native engine: the tensor-parallel group failed; ending every stream and stopping the generator")
        await self._release(EngineUnavailable(f"{reason}; the generator is stopping"))
        self._on_fatal()

    def _report_health(self, serving: bool) -> None:
        """The step loop's health, except that a failed group stays NOT_SERVING."""
        self._on_health(serving and self._failure is None)

    # -- requests -----------------------------------------------------------------------------------

    def _running_loop(self) -> StepLoop:
        if self._failure is not None:
            raise EngineUnavailable(f"{self._failure}; the generator is stopping")
        if self._loop_thread is None:
            raise EngineUnavailable("engine is not running (starting or stopping)")
        return self._loop_thread

    def _admit(self) -> None:
        limit = self._config.max_batch_size + self._config.max_queued_requests
        if self._in_flight >= limit:
            raise Overloaded(f"generator queue is full ({limit} requests in flight); retry later")

    def _sequence(self, request: GenerationRequest) -> Sequence:
        stops = set(request.stop_token_ids) if request.ignore_eos else {*self._eos_ids, *request.stop_token_ids}
        assert request.max_new_tokens is not None  # validation fills the default in
        return Sequence(seq_id=next(self._ids), token_ids=list(request.prompt_token_ids),
                        num_prompt_tokens=len(request.prompt_token_ids), max_new_tokens=request.max_new_tokens,
                        stop_token_ids=frozenset(stops), sampling=sampling_options(request))

    def _final_chunk(self, tokens: list[TokenOutput], seq: Sequence, request: GenerationRequest) -> GenerationChunk:
        last = seq.token_ids[-1] if seq.num_output_tokens else None
        # A grammar that allows nothing more ends the request as its EOS would (EOS was the only token left).
        otherwise = FinishReason.EOS_TOKEN if seq.is_constraint_done else FinishReason.LENGTH
        reason, stop_id = stop_reason(last, request, self._eos_ids, otherwise)
        seed = request.sampling.seed if seq.sampling.is_greedy else seq.sampling.seed  # the one drawn, if any
        return GenerationChunk(tokens, reason, stop_id, seq.num_prompt_tokens, seq.num_output_tokens, seed,
                               num_cached_prompt_tokens=seq.num_cached_prompt_tokens)


def sampling_options(request: GenerationRequest) -> SamplingOptions:
    """The request's knobs with neutral values for "off"; a sampled request without a seed gets a random one."""
    s: SamplingParams = request.sampling
    greedy = s.is_greedy
    seed = s.seed if s.seed is not None else (0 if greedy else secrets.randbits(63))
    return SamplingOptions(
        temperature=0.0 if greedy else float(s.temperature or 0.0), top_k=s.top_k or 0,
        top_p=1.0 if s.top_p is None else s.top_p, min_p=s.min_p or 0.0,
        repetition_penalty=1.0 if s.repetition_penalty is None else s.repetition_penalty,
        presence_penalty=s.presence_penalty or 0.0, frequency_penalty=s.frequency_penalty or 0.0, seed=seed,
        min_new_tokens=request.min_new_tokens, logprobs=request.logprobs or request.top_logprobs > 0,
        top_logprobs=request.top_logprobs,
    )


async def _next_tokens(queue: asyncio.Queue[Emitted | BaseException]) -> tuple[list[TokenOutput], bool]:
    """Waits for one token, then takes every token already queued (a slow reader gets them together)."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    tokens: list[TokenOutput] = []
    for item in items:
        if isinstance(item, BaseException):
            raise item
        tokens.append(item.token)
        if item.finished:
            return tokens, True
    return tokens, False
