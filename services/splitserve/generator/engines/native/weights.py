"""Loads a Hugging Face safetensors folder (single file or sharded index) straight onto the device.

q/k/v and gate/up are fused at load time; under tensor parallelism each rank keeps its heads and
its slice of the MLP (column-parallel qkv and gate/up, row-parallel o and down), while the
embedding and LM head are replicated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from splitserve.generator.engines.native.layers import SINGLE_DEVICE, TensorParallel
from splitserve.generator.engines.native.model_config import ModelConfig


@dataclass
class LayerWeights:
    """One decoder layer's tensors, fused and sharded."""

    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 KV) * D / tp, hidden]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # Qwen3: RMSNorm over each head
    k_norm: torch.Tensor | None
    o: torch.Tensor  # [hidden, Hq * D / tp]
    o_bias: torch.Tensor | None  # added on rank 0 only (the reduction sums ranks)
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * ffn / tp, hidden]
    down: torch.Tensor  # [hidden, ffn / tp]


@dataclass
class ModelWeights:
    """All of a model's tensors on one rank."""

    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor  # [vocab, hidden]; the embedding itself when tied


class _Reader:
    """Tensors by name across the shards of a folder, read onto the device in the target dtype."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self._handles = [safe_open(str(folder / name), framework="pt", device=str(device)) for name in files]
        self._where = {key: handle for handle in self._handles for key in handle.keys()}  # noqa: SIM118
        self._dtype = dtype

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> torch.Tensor:
        if name not in self._where:
            raise ValueError(f"weight {name!r} is missing from the model folder")
        part = self._where[name].get_slice(name)
        if rows is not None:
            part = part[rows[0]:rows[1]]
        elif cols is not None:
            part = part[:, cols[0]:cols[1]]
        else:
            part = part[:]
        tensor: torch.Tensor = part.to(self._dtype)
        return tensor.contiguous()


def load_weights(folder: str | Path, config: ModelConfig, device: torch.device, dtype: torch.dtype,
                 tp: TensorParallel = SINGLE_DEVICE) -> ModelWeights:
    """Reads, fuses and shards every tensor of the model."""
    reader = _Reader(Path(folder), device, dtype)
    layers = [_layer(reader, config, tp, f"model.layers.{i}.") for i in range(config.num_layers)]
    embed = reader.get("model.embed_tokens.weight")
    tied = config.tie_word_embeddings or not reader.has("lm_head.weight")
    return ModelWeights(embed, layers, reader.get("model.norm.weight"),
                        embed if tied else reader.get("lm_head.weight"))


def _layer(reader: _Reader, config: ModelConfig, tp: TensorParallel, prefix: str) -> LayerWeights:
    d = config.head_dim
    q_rows = _scaled(tp.shard(config.num_heads, "num_attention_heads"), d)
    kv_rows = _scaled(tp.shard(config.num_kv_heads, "num_key_value_heads"), d)
    ffn = tp.shard(config.intermediate_size, "intermediate_size")
    attn, mlp = prefix + "self_attn.", prefix + "mlp."
    qkv = [reader.get(attn + name + "_proj.weight", rows=r) for name, r in (("q", q_rows), ("k", kv_rows),
                                                                              ("v", kv_rows))]
    qkv_bias = None
    if config.qkv_bias:
        qkv_bias = torch.cat([reader.get(attn + name + "_proj.bias", rows=r)
                              for name, r in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))])
    o_bias = reader.get(attn + "o_proj.bias") if config.o_bias and tp.rank == 0 else None
    return LayerWeights(
        input_norm=reader.get(prefix + "input_layernorm.weight"),
        qkv=torch.cat(qkv), qkv_bias=qkv_bias,
        q_norm=reader.get(attn + "q_norm.weight") if config.qk_norm else None,
        k_norm=reader.get(attn + "k_norm.weight") if config.qk_norm else None,
        o=reader.get(attn + "o_proj.weight", cols=q_rows), o_bias=o_bias,
        post_norm=reader.get(prefix + "post_attention_layernorm.weight"),
        gate_up=torch.cat([reader.get(mlp + name + "_proj.weight", rows=ffn) for name in ("gate", "up")]),
        down=reader.get(mlp + "down_proj.weight", cols=ffn),
    )


def _scaled(span: tuple[int, int], factor: int) -> tuple[int, int]:
    return span[0] * factor, span[1] * factor
