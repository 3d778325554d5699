"""Fused elementwise kernels for CUDA: residual add + RMSNorm, RoPE + KV-cache write, SiLU-and-mul.

A decoder layer written with plain PyTorch ops launches about 40 kernels, most of them tiny
elementwise ones; at batch 1 their launches, not the weights, set the step time, and without a CUDA
graph (steps with prefill) their Python dispatch does. These three kernels leave nine launches per
layer. Arithmetic is in float32 with the results rounded to the model's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit  # type: ignore[untyped-decorator]
def _add_rms_norm(x_ptr, residual_ptr, weight_ptr, out_ptr, eps, dim, stride_x, stride_r, stride_o,  # type: ignore[no-untyped-def]
                  HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(residual_ptr.dtype.element_ty)
        tl.store(residual_ptr + row * stride_r + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / dim + eps)
    normed = (h * rstd).to(x.dtype).to(tl.float32) * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, normed.to(out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x) * weight, residual + x), the sum written into `residual` in place."""
    rows, dim = x.shape
    out = torch.empty_like(x)
    _add_rms_norm[(rows,)](x, x if residual is None else residual, weight, out, eps, dim, x.stride(0),
                           x.stride(0) if residual is None else residual.stride(0), out.stride(0),
                           HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(dim), num_warps=8)
    return out, x if residual is None else residual


@triton.jit  # type: ignore[untyped-decorator]
def _rope_write_kv(qkv_ptr, positions_ptr, cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,  # type: ignore[no-untyped-def]
                   stride_qkv, stride_q_tok, stride_q_head, stride_cache_slot, stride_cache_head, stride_table,
                   NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)  # q heads, then k heads, then v heads of the fused qkv row
    half = tl.arange(0, HALF)
    src = qkv_ptr + token * stride_qkv + head * (2 * HALF)
    x1 = tl.load(src + half)
    x2 = tl.load(src + HALF + half)
    slot = tl.load(slots_ptr + token)
    if head >= NUM_HEADS + NUM_KV_HEADS:  # v: copied into the cache as is
        dst = v_cache_ptr + slot * stride_cache_slot + (head - NUM_HEADS - NUM_KV_HEADS) * stride_cache_head
        tl.store(dst + half, x1)
        tl.store(dst + HALF + half, x2)
    else:
        pos = tl.load(positions_ptr + token)
        cos = tl.load(cos_ptr + pos * stride_table + half).to(tl.float32)
        sin = tl.load(sin_ptr + pos * stride_table + half).to(tl.float32)
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        r1 = (a * cos - b * sin).to(x1.dtype)
        r2 = (b * cos + a * sin).to(x1.dtype)
        if head < NUM_HEADS:
            dst = q_out_ptr + token * stride_q_tok + head * stride_q_head
        else:
            dst = k_cache_ptr + slot * stride_cache_slot + (head - NUM_HEADS) * stride_cache_head
        tl.store(dst + half, r1)
        tl.store(dst + HALF + half, r2)


def rope_write_kv(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, num_heads: int,
                  num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Rotates q and k of the fused rows qkv [T, (H + 2 KV) * D], stores k and v at their slots; returns q [T, H, D]."""
    tokens = qkv.shape[0]
    q = torch.empty(tokens, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k_flat = k_cache.view(-1, num_kv_heads, head_dim)
    v_flat = v_cache.view(-1, num_kv_heads, head_dim)
    _rope_write_kv[(tokens, num_heads + 2 * num_kv_heads)](
        qkv, positions, cos, sin, q, k_flat, v_flat, slots, qkv.stride(0), q.stride(0), q.stride(1),
        k_flat.stride(0), k_flat.stride(1), cos.stride(0), NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads,
        HALF=head_dim // 2, num_warps=1)
    return q


@triton.jit  # type: ignore[untyped-decorator]
def _silu_and_mul(gate_up_ptr, out_ptr, width, stride_in, stride_out, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + width + cols, mask=mask, other=0.0)
    silu = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
    tl.store(out_ptr + row * stride_out + cols, (silu.to(tl.float32) * up.to(tl.float32)).to(up.dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for rows [T, 2 F] holding gate then up."""
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(rows, width, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_and_mul[(rows, triton.cdiv(width, block))](gate_up, out, width, gate_up.stride(0), out.stride(0),
                                                     BLOCK=block, num_warps=4)
    return out
