"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) over a flat batch of tokens and a paged KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitserve.generator.engines.native.attention import AttentionBackend, AttentionMetadata
from splitserve.generator.engines.native.layers import SINGLE_DEVICE, Rotary, TensorParallel, rms_norm
from splitserve.generator.engines.native.model_config import ModelConfig
from splitserve.generator.engines.native.ops import LayerOps, TorchOps
from splitserve.generator.engines.native.weights import LayerWeights, ModelWeights

KVCache = tuple[torch.Tensor, torch.Tensor]  # per layer: [num_blocks, block_size, KV, D] each


class DecoderModel:
    """Pure functions of the weights: `forward` to hidden states, `logits` for the rows that sample."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, attention: AttentionBackend,
                 max_positions: int, tp: TensorParallel = SINGLE_DEVICE, ops: LayerOps | None = None) -> None:
        self.config = config
        self.ops = ops or TorchOps()
        self.weights = weights
        self.attention = attention
        self.tp = tp
        self.num_heads = config.num_heads // tp.size
        self.num_kv_heads = config.num_kv_heads // tp.size
        self.rotary = Rotary(config, max_positions, weights.embed.device, weights.embed.dtype)
        self.scale = config.head_dim ** -0.5

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [T] → final-normed hidden states [T, hidden]."""
        eps, norm = self.config.rms_norm_eps, self.ops.add_rms_norm
        h, residual = F.embedding(input_ids, self.weights.embed), None
        for layer, cache in zip(self.weights.layers, kv_caches, strict=True):
            x, residual = norm(h, residual, layer.input_norm, eps)
            h = self._attention(layer, x, positions, cache, meta)
            x, residual = norm(h, residual, layer.post_norm, eps)
            h = self._mlp(layer, x)
        return norm(h, residual, self.weights.norm, eps)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] → [N, vocab]."""
        return F.linear(hidden, self.weights.lm_head)

    def _attention(self, layer: LayerWeights, x: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                   meta: AttentionMetadata) -> torch.Tensor:
        d, hq, hkv = self.config.head_dim, self.num_heads, self.num_kv_heads
        qkv = F.linear(x, layer.qkv, layer.qkv_bias)
        if layer.q_norm is not None and layer.k_norm is not None:
            qkv = self._qk_norm(qkv, layer.q_norm, layer.k_norm)
        q = self.ops.rope_write_kv(qkv, positions, self.rotary, cache, meta.slot_mapping, hq, hkv, d)
        out = self.attention(q, cache[0], cache[1], meta, self.scale)
        return self.tp.all_reduce(F.linear(out.reshape(-1, hq * d), layer.o, layer.o_bias))

    def _qk_norm(self, qkv: torch.Tensor, q_norm: torch.Tensor, k_norm: torch.Tensor) -> torch.Tensor:
        """Qwen3: RMSNorm over each query and key head before RoPE."""
        d, hq, hkv = self.config.head_dim, self.num_heads, self.num_kv_heads
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q = rms_norm(q.reshape(-1, hq, d), q_norm, self.config.rms_norm_eps).flatten(1)
        k = rms_norm(k.reshape(-1, hkv, d), k_norm, self.config.rms_norm_eps).flatten(1)
        return torch.cat((q, k, v), dim=-1)

    def _mlp(self, layer: LayerWeights, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(F.linear(self.ops.silu_and_mul(F.linear(x, layer.gate_up)), layer.down))
