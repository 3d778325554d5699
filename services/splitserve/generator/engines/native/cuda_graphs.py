"""Decode steps captured as CUDA graphs, one per batch-size bucket, over static input buffers.

A decode step's shapes depend only on the batch size, so each bucket is captured once at start-up
(largest first, one shared memory pool) and replayed with the step's inputs copied into the static
buffers. Rows past the real batch are padding: they write K/V into a scratch slot, have no queries
(their attention returns at once) and their logits are dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch

from splitserve.generator.engines.native.attention import AttentionMetadata
from splitserve.generator.engines.native.step_inputs import StepInputs

# forward(input_ids, positions, meta) -> logits [B, vocab]
DecodeForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_batch (and max_batch itself)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16))
    return [*buckets, max_batch]


class DecodeGraphs:
    """Captured decode steps for every bucket up to `max_batch`."""

    def __init__(self, forward: DecodeForward, max_batch: int, max_blocks_per_seq: int, scratch_slot: int,
                 device: torch.device) -> None:
        self._forward = forward
        self.buckets = batch_buckets(max_batch)
        self._scratch_slot = scratch_slot
        new = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=device)  # noqa: E731
        self._ids, self._positions, self._slots = new(max_batch), new(max_batch), new(max_batch)
        self._seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self._query_start = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self._tables = torch.zeros(max_batch, max_blocks_per_seq, dtype=torch.int32, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}

    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.buckets):
            meta = self._meta(size)
            for _ in range(2):  # warm up: Triton compiles and autotunes outside the capture
                self._forward(self._ids[:size], self._positions[:size], meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._logits[size] = self._forward(self._ids[:size], self._positions[:size], meta)
            self._graphs[size] = graph

    def fits(self, batch: int) -> bool:
        return batch <= self.buckets[-1]

    def run(self, inputs: StepInputs) -> torch.Tensor:
        """Replays the smallest bucket that holds the batch; returns the real rows' logits."""
        n = inputs.seq_lens.shape[0]
        size = self.buckets[bisect.bisect_left(self.buckets, n)]
        self._fill(inputs, n, size)
        self._graphs[size].replay()
        return self._logits[size][:n]

    def _fill(self, inputs: StepInputs, n: int, size: int) -> None:
        width = inputs.block_tables.shape[1]
        self._ids[:n].copy_(torch.from_numpy(inputs.input_ids), non_blocking=True)
        self._positions[:n].copy_(torch.from_numpy(inputs.positions), non_blocking=True)
        self._slots[:n].copy_(torch.from_numpy(inputs.slot_mapping), non_blocking=True)
        self._seq_lens[:n].copy_(torch.from_numpy(inputs.seq_lens), non_blocking=True)
        self._tables[:n, :width].copy_(torch.from_numpy(inputs.block_tables), non_blocking=True)
        if size > n:  # padding rows: no queries, K/V to the scratch slot
            self._slots[n:size].fill_(self._scratch_slot)
            self._seq_lens[n:size].zero_()
            self._query_start[n + 1:size + 1].fill_(n)
        self._query_start[:n + 1].copy_(torch.arange(n + 1, dtype=torch.int32), non_blocking=True)

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(self._slots[:size], self._query_start[:size + 1], self._seq_lens[:size],
                                 self._tables[:size], max_query_len=1, max_seq_len=0)
