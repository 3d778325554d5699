"""Paged attention in one Triton kernel for decodes, prefill chunks and cached prefixes (CUDA).

One program per (sequence, KV head, tile of query tokens). The query heads that share the KV head
(GQA) are stacked with the tile's tokens into one [BLOCK_M, D] operand, so each K/V block is read once
per group and multiplied with tensor cores; an online softmax runs over the sequence's blocks.
The grid depends only on the batch shape, so decode steps can be captured in CUDA graphs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from splitserve.generator.engines.native.attention import AttentionMetadata


@triton.jit  # type: ignore[untyped-decorator]
def _paged_attention(q_ptr, k_ptr, v_ptr, o_ptr, block_tables, seq_lens, query_start, scale,  # type: ignore[no-untyped-def]
                     stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_ot, stride_oh, stride_bt,
                     GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
                     HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, IEEE: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(query_start + seq)
    q_len = tl.load(query_start + seq + 1) - q_start
    if tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens + seq)
    rows = tl.arange(0, BLOCK_M)
    q_index = tile * BLOCK_Q + rows // GROUP  # token of the sequence's queries
    head = kv_head * GROUP + rows % GROUP
    valid = (rows < BLOCK_Q * GROUP) & (q_index < q_len)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + (q_start + q_index)[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=valid[:, None], other=0.0)
    q_pos = seq_len - q_len + q_index
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    qk_scale = scale * 1.4426950408889634  # exp2 instead of exp
    kv_end = tl.minimum(seq_len, seq_len - q_len + (tile + 1) * BLOCK_Q)  # the tile's last query sees no further
    offs = tl.arange(0, BLOCK_SIZE)
    for b in range(0, tl.cdiv(kv_end, BLOCK_SIZE)):
        block = tl.load(block_tables + seq * stride_bt + b).to(tl.int64)
        kv_off = block * stride_kb + offs[:, None] * stride_ks + kv_head * stride_kh + dims[None, :]
        k = tl.load(k_ptr + kv_off)
        if IEEE:  # noqa: SIM108  # float32 models: exact products (Triton's default for float32 is TF32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale
        key_pos = b * BLOCK_SIZE + offs
        s = tl.where((key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] < seq_len), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + (q_start + q_index)[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
             out.to(o_ptr.dtype.element_ty), mask=valid[:, None])


class TritonPagedAttention:
    """The Triton kernel behind the AttentionBackend protocol."""

    def __init__(self, block_q: int = 16) -> None:
        self.block_q = block_q

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata, scale: float) -> torch.Tensor:
        num_heads, head_dim = q.shape[1], q.shape[2]
        group = num_heads // k_cache.shape[2]
        block_q = 1 if meta.max_query_len == 1 else self.block_q
        block_m = max(16, triton.next_power_of_2(block_q * group))
        out = torch.empty_like(q)
        grid = (meta.seq_lens.shape[0], k_cache.shape[2], triton.cdiv(meta.max_query_len, block_q))
        _paged_attention[grid](
            q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens, meta.query_start, scale,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            out.stride(0), out.stride(1), meta.block_tables.stride(0),
            GROUP=group, BLOCK_Q=block_q, BLOCK_M=block_m, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
            IEEE=q.dtype == torch.float32,
        )
        return out
