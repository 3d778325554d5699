"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) over a flat batch of tokens and a paged KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitserve.generator.engines.native.attention import AttentionBackend, AttentionMetadata, write_kv
from splitserve.generator.engines.native.layers import SINGLE_DEVICE, Rotary, TensorParallel, rms_norm
from splitserve.generator.engines.native.model_config import ModelConfig
from splitserve.generator.engines.native.weights import LayerWeights, ModelWeights

KVCache = tuple[torch.Tensor, torch.Tensor]  # per layer: [num_blocks, block_size, KV, D] each


class DecoderModel:
    """Pure functions of the weights: `forward` to hidden states, `logits` for the rows that sample."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, attention: AttentionBackend,
                 max_positions: int, tp: TensorParallel = SINGLE_DEVICE) -> None:
        self.config = config
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
        h = F.embedding(input_ids, self.weights.embed)
        for layer, cache in zip(self.weights.layers, kv_caches, strict=True):
            h = h + self._attention(layer, rms_norm(h, layer.input_norm, self.config.rms_norm_eps), positions,
                                    cache, meta)
            h = h + self._mlp(layer, rms_norm(h, layer.post_norm, self.config.rms_norm_eps))
        return rms_norm(h, self.weights.norm, self.config.rms_norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] → [N, vocab]."""
        return F.linear(hidden, self.weights.lm_head)

    def _attention(self, layer: LayerWeights, x: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                   meta: AttentionMetadata) -> torch.Tensor:
        d, hq, hkv = self.config.head_dim, self.num_heads, self.num_kv_heads
        qkv = F.linear(x, layer.qkv, layer.qkv_bias)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.view(-1, hq, d), k.view(-1, hkv, d), v.view(-1, hkv, d)
        if layer.q_norm is not None and layer.k_norm is not None:
            q = rms_norm(q, layer.q_norm, self.config.rms_norm_eps)
            k = rms_norm(k, layer.k_norm, self.config.rms_norm_eps)
        q, k = self.rotary.apply(q, positions), self.rotary.apply(k, positions)
        write_kv(k, v, cache[0], cache[1], meta.slot_mapping)
        out = self.attention(q, cache[0], cache[1], meta, self.scale)
        return self.tp.all_reduce(F.linear(out.reshape(-1, hq * d), layer.o, layer.o_bias))

    def _mlp(self, layer: LayerWeights, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)
        return self.tp.all_reduce(F.linear(F.silu(gate) * up, layer.down))
