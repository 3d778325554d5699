"""The decoder's elementwise steps, two ways: plain PyTorch (CPU; transformers' exact arithmetic) and fused
Triton kernels (CUDA). The model calls one `LayerOps`; which one is decided once, by the device."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from splitserve.generator.engines.native.attention import write_kv
from splitserve.generator.engines.native.layers import Rotary, rms_norm

KVPair = tuple[torch.Tensor, torch.Tensor]  # one layer's K and V cache


class LayerOps(Protocol):
    """Residual add + RMSNorm, RoPE + KV-cache write, and SiLU-and-mul."""

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, new residual); the new residual is `residual + x`, or `x` for the first layer."""
        ...

    def rope_write_kv(self, qkv: torch.Tensor, positions: torch.Tensor, rotary: Rotary, cache: KVPair,
                      slots: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
        """Rotated queries [T, H, D]; rotated keys and the values are stored at their cache slots."""
        ...

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        ...


class TorchOps:
    """Plain PyTorch, the same arithmetic as transformers' Llama (fp32 results match it exactly)."""

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x if residual is None else residual + x
        return rms_norm(residual, weight, eps), residual

    def rope_write_kv(self, qkv: torch.Tensor, positions: torch.Tensor, rotary: Rotary, cache: KVPair,
                      slots: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
        q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
        q = rotary.apply(q.view(-1, num_heads, head_dim), positions)
        k = rotary.apply(k.view(-1, num_kv_heads, head_dim), positions)
        write_kv(k, v.view(-1, num_kv_heads, head_dim), cache[0], cache[1], slots)
        return q

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class TritonOps:
    """The fused kernels of fused_triton.py."""

    def __init__(self) -> None:
        from splitserve.generator.engines.native import fused_triton

        self._kernels = fused_triton

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self._kernels.add_rms_norm(x, residual, weight, eps)

    def rope_write_kv(self, qkv: torch.Tensor, positions: torch.Tensor, rotary: Rotary, cache: KVPair,
                      slots: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
        return self._kernels.rope_write_kv(qkv, positions, rotary.cos, rotary.sin, cache[0], cache[1], slots,
                                           num_heads, num_kv_heads, head_dim)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self._kernels.silu_and_mul(gate_up)


def layer_ops(device: torch.device) -> LayerOps:
    """Fused Triton kernels on CUDA, plain PyTorch elsewhere."""
    return TritonOps() if device.type == "cuda" else TorchOps()
