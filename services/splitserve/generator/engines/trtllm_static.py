"""Fallback for prebuilt engines when only the Python ModelRunner exists: static batches on one thread.

ModelRunner cannot add requests to a running batch, so a dedicated thread runs one batch at a time
(the thread is the lock): requests waiting with the same sampling settings are batched together, and
the batch streams until every row has finished or been cancelled. Stop tokens and per-row
max_new_tokens are applied here, since one generate() call takes one value for the whole batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from splitserve.common.errors import EngineUnavailable
from splitserve.generator.engines.trtllm_common import (
    ModelFacts,
    StreamState,
    end_and_stop_ids,
    import_trtllm,
    stop_reason_of,
)
from splitserve.generator.engines.trtllm_limits import EngineLimits, limit_error
from splitserve.generator.engines.trtllm_sampling import runner_kwargs
from splitserve.link.types import (
    EngineCapabilities,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenOutput,
)

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig


@dataclass
class _Job:
    """One request of a static batch, and the asyncio queue its stream reads."""

    request: GenerationRequest
    outbox: asyncio.Queue[Any]
    loop: asyncio.AbstractEventLoop
    state: StreamState = field(init=False)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # set by the batch thread only

    def __post_init__(self) -> None:
        self.state = StreamState(self.request)

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one generate() call."""
        return (self.request.sampling, self.request.min_new_tokens, self.request.ignore_eos)

    def send(self, item: GenerationChunk | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)


class StaticBatchBackend:
    """The Python ModelRunner behind the engine interface, one static batch at a time."""

    capabilities = EngineCapabilities(seed=True, repetition_penalty=True, min_new_tokens=True)

    def __init__(self, config: GeneratorConfig, facts: ModelFacts, limits: EngineLimits) -> None:
        self._config = config
        self._facts = facts
        self._limits = limits
        self._runner: Any = None
        self._torch: Any = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="trtllm-static-batches", daemon=True)

    async def start(self) -> None:
        if self._limits.tensor_parallel_size > 1:
            raise RuntimeError("the Python ModelRunner fallback serves single-GPU engines only; "
                               "use a TensorRT-LLM build with ModelRunnerCpp for tensor parallelism")
        import torch

        runtime = import_trtllm("tensorrt_llm.runtime")
        self._torch = torch
        self._runner = await asyncio.to_thread(runtime.ModelRunner.from_dir, engine_dir=self._config.engine_dir,
                                               rank=0)
        self._thread.start()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        job = _Job(request, asyncio.Queue(), asyncio.get_running_loop())
        self._jobs.put(job)
        done = False
        try:
            while not done:
                item = await job.outbox.get()
                if isinstance(item, BaseException):
                    raise item
                done = item.finish_reason is not None
                yield item
        finally:
            job.cancelled.set()  # the batch drops this row; it stops early once all rows are gone

    async def stop(self) -> None:
        self._jobs.put(None)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 30)

    # -- the batch thread ---------------------------------------------------------------------------

    def _serve(self) -> None:
        while (first := self._jobs.get()) is not None:
            batch = [first, *self._compatible(first)]
            try:
                self._run_batch(batch)
            except Exception as error:
                failure = limit_error(error) or EngineUnavailable(f"engine failed the batch: {error}")
                for job in batch:
                    if not job.finished:
                        job.send(failure)
        for job in self._drain():
            job.send(EngineUnavailable("generator is shutting down"))

    def _compatible(self, first: _Job) -> list[_Job]:
        """Takes waiting jobs that can share first's batch; puts the others back in order."""
        taken: list[_Job] = []
        others: list[_Job] = []
        for job in self._drain():
            fits = job.key == first.key and len(taken) + 1 < self._limits.max_batch_size
            (taken if fits else others).append(job)
        for job in others:
            self._jobs.put(job)
        return taken

    def _drain(self) -> list[_Job]:
        jobs: list[_Job] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return jobs
            if job is None:  # stop() while draining: keep the sentinel for the serve loop
                self._jobs.put(None)
                return jobs
            jobs.append(job)

    def _run_batch(self, batch: list[_Job]) -> None:
        first = batch[0].request
        end_id, _ = end_and_stop_ids(first, self._facts)
        prompt_lengths = [len(job.request.prompt_token_ids) for job in batch]
        outputs = self._runner.generate(
            batch_input_ids=[self._torch.tensor(job.request.prompt_token_ids, dtype=self._torch.int32)
                             for job in batch],
            max_new_tokens=max(job.request.max_new_tokens or 1 for job in batch),
            end_id=end_id, pad_id=self._facts.pad_token_id, streaming=True, return_dict=True,
            output_sequence_lengths=True, **runner_kwargs(first.sampling, first.min_new_tokens),
        )
        consumed = list(prompt_lengths)
        for output in outputs:
            # output_ids: [batch, beams, L] (prompt + generated, padded); sequence_lengths: [batch, beams]
            for row, job in enumerate(batch):
                seq_len = int(output["sequence_lengths"][row][0])
                new = [int(t) for t in output["output_ids"][row][0][consumed[row]:seq_len]]
                consumed[row] = seq_len
                self._advance(job, new)
            if all(job.finished or job.cancelled.is_set() for job in batch):
                outputs.close()  # every row is finished or abandoned: stop the batch now
                return
        for job in batch:  # rows the engine ended early stopped on end_id
            self._finish(job, [], FinishReason.EOS_TOKEN, self._facts.end_id)

    def _advance(self, job: _Job, new: list[int]) -> None:
        """Streams one step of a row; an alive row gains one token per step, so none means end_id."""
        if job.finished or job.cancelled.is_set():
            return
        if not new:
            self._finish(job, [], FinishReason.EOS_TOKEN, self._facts.end_id)
            return
        request, tokens = job.request, []
        _, stops = end_and_stop_ids(request, self._facts)
        for token_id in new:
            tokens.append(TokenOutput(token_id))
            count = job.state.num_generated + len(tokens)
            if token_id in stops and count >= request.min_new_tokens:
                self._finish(job, tokens, *stop_reason_of(token_id, request, self._facts))
                return
            if count >= (request.max_new_tokens or 1):
                self._finish(job, tokens, FinishReason.LENGTH, None)
                return
        job.send(job.state.chunk(tokens))

    @staticmethod
    def _finish(job: _Job, tokens: list[TokenOutput], reason: FinishReason, stop_id: int | None) -> None:
        if not job.finished and not job.cancelled.is_set():
            job.finished = True
            job.send(job.state.final(tokens, reason, stop_id))
