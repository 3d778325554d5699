"""Attention over the paged KV cache: the step's metadata, the cache write, and the portable backend.

Every step runs as one flat batch of tokens (decodes and prefill chunks together). Sequence i owns
query rows [query_start[i], query_start[i+1]) and attends to the first seq_lens[i] positions of its
blocks; its queries are the last positions of that range (a cached prefix or earlier chunks come
first), so query j of a sequence sits at position seq_lens[i] - q_len + j and sees keys up to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the cache and what each sequence attends to."""

    slot_mapping: torch.Tensor  # [T] int64: cache slot (block * block_size + offset) of each token's K/V
    query_start: torch.Tensor  # [N + 1] int32: cumulative query lengths
    seq_lens: torch.Tensor  # [N] int32: context length of each sequence after this step
    block_tables: torch.Tensor  # [N, max_blocks] int32
    max_query_len: int
    max_seq_len: int


class AttentionBackend(Protocol):
    """Computes attention for a flat batch of queries against the paged cache."""

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """q: [T, H, D]; caches: [num_blocks, block_size, KV, D]; returns [T, H, D]."""
        ...


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Stores this step's keys and values ([T, KV, D]) at their slots."""
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


class TorchPagedAttention:
    """Gathers each sequence's blocks and runs SDPA over a padded batch (CPU, and any device as a fallback).

    The query heads that share a KV head are laid out as extra query rows of that head
    ([N, KV, Q * G, D]), so SDPA needs no GQA expansion of the keys and values.
    """

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata, scale: float) -> torch.Tensor:
        num_seqs, block_size, kv_heads = meta.seq_lens.shape[0], k_cache.shape[1], k_cache.shape[2]
        group, head_dim = q.shape[1] // kv_heads, q.shape[2]
        tables = meta.block_tables[:, :-(-meta.max_seq_len // block_size)].long()  # [N, nb]
        keys = _gathered(k_cache, tables, meta.max_seq_len)  # [N, KV, S, D]
        values = _gathered(v_cache, tables, meta.max_seq_len)
        key_pos = torch.arange(keys.shape[2], device=q.device)
        if meta.max_query_len == 1:  # decodes: one query per sequence, no padding
            queries = q.view(num_seqs, kv_heads, group, head_dim)
            mask = (key_pos[None, :] < meta.seq_lens[:, None])[:, None, None, :]
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
            return out.reshape(num_seqs, kv_heads * group, head_dim)
        rows, q_index = _padded_rows(meta, num_seqs, q.device)  # [N, Q]
        num_q = q_index.shape[1]
        queries = q[rows].view(num_seqs, num_q, kv_heads, group, head_dim).permute(0, 2, 1, 3, 4)
        mask = _causal_mask(meta, q_index, key_pos).repeat_interleave(group, dim=2)  # [N, 1, Q * G, S]
        out = F.scaled_dot_product_attention(queries.reshape(num_seqs, kv_heads, num_q * group, head_dim),
                                             keys, values, attn_mask=mask, scale=scale)
        out = out.view(num_seqs, kv_heads, num_q, group, head_dim).permute(0, 2, 1, 3, 4)
        return _unpadded(out.reshape(num_seqs, num_q, kv_heads * group, head_dim), meta, q_index)


def _gathered(cache: torch.Tensor, tables: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    n, nb = tables.shape
    blocks = cache[tables]  # [N, nb, block_size, KV, D]
    return blocks.reshape(n, nb * cache.shape[1], cache.shape[2], cache.shape[3])[:, :max_seq_len].transpose(1, 2)


def _padded_rows(meta: AttentionMetadata, num_seqs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat query row of each (sequence, query index) pair, clamped for padding, and the index grid."""
    starts = meta.query_start[:-1].long()
    q_index = torch.arange(meta.max_query_len, device=device)[None, :].expand(num_seqs, -1)  # [N, Q]
    lengths = (meta.query_start[1:] - meta.query_start[:-1]).long()
    rows = starts[:, None] + torch.minimum(q_index, (lengths - 1).clamp(min=0)[:, None])
    return rows, q_index


def _causal_mask(meta: AttentionMetadata, q_index: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    lengths = (meta.query_start[1:] - meta.query_start[:-1]).long()
    q_pos = meta.seq_lens.long()[:, None] - lengths[:, None] + q_index  # [N, Q]
    visible = key_pos[None, None, :] <= q_pos[:, :, None]  # [N, Q, S]
    visible[:, :, 0] = True  # padded queries must see something, else SDPA yields NaN (their rows are dropped)
    return visible[:, None]


def _unpadded(out: torch.Tensor, meta: AttentionMetadata, q_index: torch.Tensor) -> torch.Tensor:
    lengths = (meta.query_start[1:] - meta.query_start[:-1]).long()
    return out[q_index < lengths[:, None]]  # rows in sequence order, which is the flat order
