"""The decoder's shape, read from a Hugging Face model folder's config.json (transformers 4.x or 5.x keys)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UnsupportedModel(ValueError):
    """The model folder holds an architecture or option this engine does not implement."""


@dataclass(frozen=True)
class _Family:
    qkv_bias: bool  # always biased (Qwen2); otherwise `attention_bias` decides
    qk_norm: bool


# Llama-family decoders this engine runs; each differs only in these switches.
FAMILIES: dict[str, _Family] = {
    "LlamaForCausalLM": _Family(qkv_bias=False, qk_norm=False),
    "MistralForCausalLM": _Family(qkv_bias=False, qk_norm=False),
    "Qwen2ForCausalLM": _Family(qkv_bias=True, qk_norm=False),
    "Qwen3ForCausalLM": _Family(qkv_bias=False, qk_norm=True),
}


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 frequency scaling ("llama3" rope type)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    """What the native decoder needs to know about a model."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    max_position_embeddings: int
    sliding_window: int | None

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelConfig:
        raw = json.loads((Path(folder) / "config.json").read_text())
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        architecture = (raw.get("architectures") or ["?"])[0]
        family = FAMILIES.get(architecture)
        if family is None:
            raise UnsupportedModel(f"architecture {architecture!r} is not supported by the native engine; "
                                   f"supported: {', '.join(FAMILIES)}")
        if raw.get("mlp_bias"):
            raise UnsupportedModel("mlp_bias=true is not supported by the native engine")
        if raw.get("hidden_act", "silu") != "silu":
            raise UnsupportedModel(f"hidden_act={raw['hidden_act']!r} is not supported (the native engine runs SwiGLU)")
        heads = raw["num_attention_heads"]
        attention_bias = bool(raw.get("attention_bias", False))
        theta, scaling = _rope(raw)
        return cls(
            architecture=architecture, vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"], num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            intermediate_size=raw["intermediate_size"], rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=theta, rope_scaling=scaling,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=family.qkv_bias or attention_bias, o_bias=attention_bias and not family.qkv_bias,
            qk_norm=family.qk_norm, max_position_embeddings=raw.get("max_position_embeddings", 4096),
            sliding_window=raw.get("sliding_window") if raw.get("use_sliding_window", True) else None,
        )


def _rope(raw: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from transformers 5's `rope_parameters` or 4.x's `rope_theta` + `rope_scaling`."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise UnsupportedModel(f"rope type {kind!r} is not supported by the native engine (default, llama3)")
    return theta, RopeScaling(float(params["factor"]), float(params["low_freq_factor"]),
                              float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))
