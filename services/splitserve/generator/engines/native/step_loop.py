"""The engine thread: drains new requests and aborts, schedules a step, runs it, hands tokens to asyncio.

One thread owns the device; asyncio owns the network. Each step's outputs cross to the event loop in
one `call_soon_threadsafe` call. A step that raises fails the requests in flight (UNAVAILABLE), resets
the scheduler and its blocks, and the loop goes on: one bad step never ends the engine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from splitserve.common.errors import EngineUnavailable, InvalidRequest
from splitserve.generator.engines.native.block_manager import BlockManager
from splitserve.generator.engines.native.model_runner import ModelRunner, StepSamples
from splitserve.generator.engines.native.scheduler import Scheduler, SchedulerOutput
from splitserve.generator.engines.native.sequence import Sequence
from splitserve.link.types import TokenOutput

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class Emitted:
    """One sampled token of a sequence; `finished` on its last."""

    token: TokenOutput
    finished: bool


# Receives a step's items on the event loop: (sink, Emitted or an exception) pairs.
Sink = Callable[[Emitted | BaseException], None]
Batch = list[tuple[Sink, Emitted | BaseException]]


@dataclass(frozen=True)
class SchedulerLimits:
    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool


class StepLoop:
    """Runs the scheduler and the model runner on a thread of its own."""

    def __init__(self, runner: ModelRunner, limits: SchedulerLimits, loop: asyncio.AbstractEventLoop,
                 on_health: Callable[[bool], None]) -> None:
        self._runner = runner
        self._limits = limits
        self._loop = loop
        self._on_health = on_health
        self.scheduler = self._new_scheduler()
        self._sinks: dict[int, tuple[Sequence, Sink]] = {}
        self._inbox: deque[tuple[Sequence, Sink] | int] = deque()  # new sequences, or ids to abort
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="native-engine", daemon=True)
        self.restarts = 0
        self.preemptions = 0
        self._held: Batch = []  # the last step's tokens, not yet handed over

    @property
    def num_inbox(self) -> int:
        return len(self._inbox)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def submit(self, seq: Sequence, sink: Sink) -> None:
        self._inbox.append((seq, sink))  # deque appends are atomic: no lock between the two threads
        self._wake.set()

    def abort(self, seq_id: int) -> None:
        self._inbox.append(seq_id)
        self._wake.set()

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._drain_inbox()
            if not self.scheduler.has_work:
                self._hand_over_held()
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                self._step()
            except Exception as error:  # the loop must outlive any one step
                self._hand_over_held()  # finished before the failure: those streams end normally
                self._recover(error)
        self._hand_over_held()

    def _drain_inbox(self) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, int):
                if self._sinks.pop(item, None) is not None:
                    self.scheduler.abort(item)
            else:
                self._sinks[item[0].seq_id] = item
                self.scheduler.add(item[0])

    def _step(self) -> None:
        output = self.scheduler.schedule()
        if output.aborted:
            self._refuse_dropped(output)
        self.preemptions += len(output.preempted)
        if not output.chunks:
            self._hand_over_held()
            return
        pending = self._runner.launch(output)
        # The previous step's tokens go to the event loop only now, while the device runs this step: its
        # thread then takes the GIL while this one waits (without it) instead of while this one launches.
        self._hand_over_held()
        samples = self._runner.finish(pending)
        sampling = [chunk.seq for chunk in output.chunks if chunk.samples]  # before update() moves them on
        finished = {id(seq) for seq in self.scheduler.update(output, samples.token_ids)}
        first, self._held = self._deliveries(sampling, samples, finished)
        if first:  # a first token is handed over at once: time to first token is not held for a launch
            self._loop.call_soon_threadsafe(_hand_over, first)

    def _hand_over_held(self) -> None:
        if self._held:
            self._loop.call_soon_threadsafe(_hand_over, self._held)
            self._held = []

    def _deliveries(self, seqs: list[Sequence], samples: StepSamples, finished: set[int]) -> tuple[Batch, Batch]:
        """The step's tokens by sink: (first tokens of their sequence, the others)."""
        first: Batch = []
        rest: Batch = []
        for i, seq in enumerate(seqs):
            entry = self._sinks.get(seq.seq_id)
            if entry is None:
                continue  # aborted after this step was scheduled
            done = id(seq) in finished
            (first if seq.num_output_tokens == 1 else rest).append((entry[1], Emitted(_token(seq, samples, i), done)))
            if done:
                del self._sinks[seq.seq_id]
        return first, rest

    def _refuse_dropped(self, output: SchedulerOutput) -> None:
        """Sequences the scheduler dropped while their stream is open can never fit the cache: refuse them."""
        batch: Batch = []
        for seq in output.aborted:
            entry = self._sinks.pop(seq.seq_id, None)
            if entry is not None:
                batch.append((entry[1], InvalidRequest(
                    f"request needs {seq.num_tokens} tokens of KV cache, over the cache's "
                    f"{self._limits.num_blocks * self._limits.block_size}")))
        if batch:
            self._loop.call_soon_threadsafe(_hand_over, batch)

    def _recover(self, error: Exception) -> None:
        log.exception("native engine step failed; failing %d requests in flight and resetting", len(self._sinks))
        self._loop.call_soon_threadsafe(self._on_health, False)
        failure = EngineUnavailable(f"engine step failed ({type(error).__name__}: {error}); request aborted, retry")
        batch: Batch = [(sink, failure) for _, sink in self._sinks.values()]
        self._sinks.clear()
        self.scheduler = self._new_scheduler()
        self.restarts += 1
        self._loop.call_soon_threadsafe(_hand_over, batch)
        self._loop.call_soon_threadsafe(self._on_health, True)

    def fail_all(self, error: BaseException) -> None:
        """Ends every stream with `error` (called on the event loop once the thread has stopped)."""
        for _, sink in self._sinks.values():
            sink(error)
        self._sinks.clear()
        while self._inbox:
            item = self._inbox.popleft()
            if not isinstance(item, int):
                item[1](error)

    def _new_scheduler(self) -> Scheduler:
        limits = self._limits
        blocks = BlockManager(limits.num_blocks, limits.block_size, limits.enable_prefix_caching)
        return Scheduler(blocks, limits.max_num_seqs, limits.max_num_batched_tokens)


def _token(seq: Sequence, samples: StepSamples, row: int) -> TokenOutput:
    token_id = samples.token_ids[row]
    options = seq.sampling
    logprob = samples.logprobs[row] if samples.logprobs is not None and options.logprobs else None
    top = tuple(samples.top[row][:options.top_logprobs]) if samples.top is not None and options.top_logprobs else ()
    return TokenOutput(token_id, logprob, top)


def _hand_over(batch: Batch) -> None:
    for sink, item in batch:
        sink(item)


__all__ = ["Emitted", "SchedulerLimits", "SchedulerOutput", "StepLoop"]
