"""Builds one step's model inputs (token ids, positions, cache slots, attention metadata) on the host."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from splitserve.generator.engines.native.scheduler import ScheduledChunk

Int64s = npt.NDArray[np.int64]
Int32s = npt.NDArray[np.int32]


@dataclass
class StepInputs:
    """Host arrays for one step; row i of the per-sequence arrays belongs to chunks[i]."""

    input_ids: Int64s  # [T]
    positions: Int64s  # [T]
    slot_mapping: Int64s  # [T]
    query_start: Int32s  # [N + 1]
    seq_lens: Int32s  # [N]
    block_tables: Int32s  # [N, max blocks of the batch]
    sample_rows: Int64s  # flat row of the last token of each chunk that samples
    max_query_len: int
    max_seq_len: int


def build_step_inputs(chunks: list[ScheduledChunk], block_size: int) -> StepInputs:
    """Flattens the chunks in order; a one-token chunk (a decode) skips the array arithmetic."""
    total = sum(chunk.num_tokens for chunk in chunks)
    ids, positions, slots = (np.empty(total, np.int64) for _ in range(3))
    query_start = np.zeros(len(chunks) + 1, np.int32)
    seq_lens = np.empty(len(chunks), np.int32)
    tables = np.zeros((len(chunks), max(len(c.seq.block_table) for c in chunks)), np.int32)
    samples: list[int] = []
    row = 0
    for i, chunk in enumerate(chunks):
        seq, start, count = chunk.seq, chunk.start, chunk.num_tokens
        table = seq.block_table
        tables[i, :len(table)] = table
        if count == 1:
            ids[row], positions[row] = seq.token_ids[start], start
            slots[row] = table[start // block_size] * block_size + start % block_size
        else:
            span = np.arange(start, start + count)
            ids[row:row + count] = seq.token_ids[start:start + count]
            positions[row:row + count] = span
            slots[row:row + count] = tables[i, span // block_size] * block_size + span % block_size
        row += count
        query_start[i + 1] = row
        seq_lens[i] = start + count
        if chunk.samples:
            samples.append(row - 1)
    return StepInputs(ids, positions, slots, query_start, seq_lens, tables, np.asarray(samples, np.int64),
                      max_query_len=max(c.num_tokens for c in chunks), max_seq_len=int(seq_lens.max()))
