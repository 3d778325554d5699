"""Counter-based Gumbel noise: a pure function of (seed, output position, token id), the same bits on CPU and CUDA.

Only int64 tensor ops whose products stay within +-2**63 (no overflow, no unsigned types), each masked back to
32 bits (two's complement `&`), so every backend, CUDA included, computes identical integers. The same
functions accept plain Python ints, which is how the tests check them.
"""

from __future__ import annotations

from typing import TypeVar

import torch

MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x9E3779B9  # lowbias32(0) == 0: salt the inputs so seed 0 and token 0 still mix
_TOKEN_SALT = 0x85EBCA6B

IntLike = TypeVar("IntLike", int, torch.Tensor)


def mul32(x: IntLike, c: int) -> IntLike:
    """(x * c) mod 2**32 for 0 <= x < 2**32: c above 2**31 is taken as c - 2**32 (same residue), so |x * c| < 2**63."""
    signed = c - (1 << 32) if c >= 1 << 31 else c
    return (x * signed) & MASK32


def lowbias32(x: IntLike) -> IntLike:
    """Chris Wellons' lowbias32 integer hash: a bijection on 32-bit values with good avalanche."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def split_seed(seed: int) -> tuple[int, int]:
    """A Python seed of any size (negative too) as its low and high 32 bits (of its value mod 2**64)."""
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def row_keys(seed_lo: IntLike, seed_hi: IntLike, position: IntLike) -> IntLike:
    """One 32-bit key per (seed, output position)."""
    key = lowbias32(lowbias32(seed_lo ^ _SEED_SALT) ^ seed_hi)
    return lowbias32(key ^ position)


def token_keys(vocab_size: int, device: torch.device) -> torch.Tensor:
    """[V] int64: a fixed 32-bit key per token id (computed once per sampler)."""
    return lowbias32(torch.arange(vocab_size, dtype=torch.int64, device=device) ^ _TOKEN_SALT)


def noise_bits(keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B, V] int64 in [0, 2**32): the hash of each (row key [B], token key [V]) pair."""
    return lowbias32(keys[:, None] ^ tokens[None, :])


def gumbel_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from 32-bit hashes, float32."""
    # 23 bits: (m + 0.5) / 2**23 is exact in float32 and lies in (0, 1), so neither log can see 0 or 1.
    u = ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))
    return -torch.log(-torch.log(u))


def gumbel_argmax(logits: torch.Tensor, seed_lo: torch.Tensor, seed_hi: torch.Tensor, position: torch.Tensor,
                  tokens: torch.Tensor) -> torch.Tensor:
    """[B] int64: argmax(logits + Gumbel noise of (seed, position, token)); logits [B, V] float32, the rest [B]/[V]."""
    keys = row_keys(seed_lo, seed_hi, position)
    return torch.argmax(logits + gumbel_from_bits(noise_bits(keys, tokens[: logits.shape[1]])), dim=-1)
