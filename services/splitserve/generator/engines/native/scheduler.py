"""Continuous batching for the native engine: decodes first, chunked prefill, preemption by recompute, aborts.

Plain Python (no torch), O(batch) per step. The engine alternates schedule() and update().
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from splitserve.generator.engines.native.block_manager import BlockManager
from splitserve.generator.engines.native.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens [start, start + num_tokens) of one sequence, run through the model this step."""

    seq: Sequence
    start: int  # seq.num_computed_tokens when scheduled
    num_tokens: int
    # Fixed when scheduled: update() appends the sampled token, which moves seq.num_tokens on.
    _samples: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_samples", self.start + self.num_tokens == self.seq.num_tokens)

    @property
    def samples(self) -> bool:
        """Whether a token is sampled after this chunk (it ends at the sequence's last token)."""
        return self._samples


@dataclass
class SchedulerOutput:
    """One step: the chunks to run (decodes first, then prefill chunks) and the sequences that left running."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # back to waiting, blocks freed, to be recomputed
    # Removed by abort(); also any sequence that can never fit the whole KV cache (the engine should have
    # rejected it), so that it cannot stall the queue.
    aborted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)

    @property
    def is_decode_only(self) -> bool:
        return bool(self.chunks) and all(chunk.num_tokens == 1 and chunk.samples for chunk in self.chunks)


class Scheduler:
    """Picks, each step, which tokens of which sequences run, within the token budget and the KV blocks."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError(f"max_num_seqs and max_num_batched_tokens must be positive, "
                             f"got {max_num_seqs} and {max_num_batched_tokens}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: preemption takes the newest, from the end
        self._abort_ids: set[int] = set()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if seq.num_tokens == 0:
            raise ValueError("a sequence needs at least one token")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def abort(self, seq_id: int) -> None:
        # Only a set insertion: the sequence leaves (and its blocks are freed) at the next schedule().
        self._abort_ids.add(seq_id)

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput(aborted=self._remove_aborted())
        budget = self._schedule_running(output)
        # A sequence preempted this step heads the queue; admitting it now would only thrash.
        if not output.preempted:
            self._schedule_waiting(output, budget)
        return output

    def update(self, output: SchedulerOutput, sampled: list[int]) -> list[Sequence]:
        """Records a step's results (`sampled`: one id per sampling chunk, in order); returns the finished."""
        num_sampling = sum(1 for chunk in output.chunks if chunk.samples)
        if len(sampled) != num_sampling:
            raise ValueError(f"expected {num_sampling} sampled tokens, got {len(sampled)}")
        next_sampled = iter(sampled)
        finished: list[Sequence] = []
        for chunk in output.chunks:
            seq = chunk.seq
            seq.num_computed_tokens += chunk.num_tokens
            self.block_manager.cache_full_blocks(seq)
            if chunk.samples and seq.append_token(next(next_sampled)):
                finished.append(seq)
        for seq in finished:
            self._finish(seq)
        if finished:
            self.running = [seq for seq in self.running if not seq.is_finished]
        return finished

    def _schedule_running(self, output: SchedulerOutput) -> int:
        """Schedules running sequences, decodes first; returns the token budget left."""
        budget = self.max_num_batched_tokens
        scheduled: dict[int, ScheduledChunk] = {}  # by seq_id, in schedule order
        for seq in self._decodes_first():
            num_tokens = min(seq.num_tokens - seq.num_computed_tokens, budget)
            # A sequence already preempted this step (for an older one) is skipped.
            if num_tokens == 0 or seq.status is not SequenceStatus.RUNNING:
                continue
            if self._reserve(seq, num_tokens, scheduled, output):
                self.block_manager.append_slots(seq, num_tokens)
                scheduled[seq.seq_id] = ScheduledChunk(seq, seq.num_computed_tokens, num_tokens)
                budget -= num_tokens
        output.chunks.extend(scheduled.values())
        return budget

    def _decodes_first(self) -> list[Sequence]:
        decodes = [seq for seq in self.running if seq.num_tokens - seq.num_computed_tokens == 1]
        prefills = [seq for seq in self.running if seq.num_tokens - seq.num_computed_tokens > 1]
        return decodes + prefills

    def _reserve(self, seq: Sequence, num_tokens: int, scheduled: dict[int, ScheduledChunk],
                 output: SchedulerOutput) -> bool:
        """Frees blocks for seq's step by preempting the newest running sequences; False if seq itself went."""
        if self._never_fits(seq):
            self.running.remove(seq)
            self._drop(seq, output)
            return False
        while not self.block_manager.can_append(seq, num_tokens):
            victim = self.running.pop()
            # A victim already scheduled this step loses its chunk (its budget is not handed out again).
            scheduled.pop(victim.seq_id, None)
            self._preempt(victim, output)
            if victim is seq:
                return False
        return True

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        """Admits waiting sequences in order while the budget, max_num_seqs and the blocks allow."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self._never_fits(seq):
                self._drop(self.waiting.popleft(), output)
                continue
            chunk = self._admit(seq, budget)
            if chunk is None:
                break  # first come, first served: nothing overtakes the head of the queue
            self.running.append(self.waiting.popleft())
            output.chunks.append(chunk)
            budget -= chunk.num_tokens

    def _admit(self, seq: Sequence, budget: int) -> ScheduledChunk | None:
        block_manager = self.block_manager
        # Even a full prefix hit leaves a token to compute in a fresh block; checking that first spares a
        # blocked head the rehashing of its prompt every step while the cache is full.
        if block_manager.num_free_blocks == 0:
            return None
        cached = block_manager.match_prefix(seq)
        start = len(cached) * block_manager.block_size
        # Chunked prefill: a prompt longer than the budget left runs over several steps.
        num_tokens = min(seq.num_tokens - start, budget)
        if not block_manager.can_allocate(cached, num_tokens):
            return None
        block_manager.allocate(seq, cached, num_tokens)
        if seq.num_preemptions == 0:
            seq.num_cached_prompt_tokens = min(start, seq.num_prompt_tokens)
        seq.status = SequenceStatus.RUNNING
        return ScheduledChunk(seq, start, num_tokens)

    def _never_fits(self, seq: Sequence) -> bool:
        return self.block_manager.num_blocks_for(seq.num_tokens) > self.block_manager.num_blocks

    def _preempt(self, seq: Sequence, output: SchedulerOutput) -> None:
        """Sends seq back to the front of the queue; its prompt and output so far are recomputed later."""
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        output.preempted.append(seq)

    def _drop(self, seq: Sequence, output: SchedulerOutput) -> None:
        self._finish(seq)
        output.aborted.append(seq)

    def _finish(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def _remove_aborted(self) -> list[Sequence]:
        if not self._abort_ids:
            return []
        abort_ids, self._abort_ids = self._abort_ids, set()
        aborted = [seq for seq in itertools.chain(self.waiting, self.running) if seq.seq_id in abort_ids]
        if aborted:
            self.waiting = deque(seq for seq in self.waiting if seq.seq_id not in abort_ids)
            self.running = [seq for seq in self.running if seq.seq_id not in abort_ids]
        for seq in aborted:
            self._finish(seq)
        return aborted
