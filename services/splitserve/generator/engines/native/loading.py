"""Builds the native engine's device side from the generator config: model, KV cache size, runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from splitserve.generator.engines.model_folder import resolve_device, resolve_dtype
from splitserve.generator.engines.native.attention import AttentionBackend, TorchPagedAttention
from splitserve.generator.engines.native.layers import SINGLE_DEVICE, TensorParallel
from splitserve.generator.engines.native.model import DecoderModel
from splitserve.generator.engines.native.model_config import ModelConfig
from splitserve.generator.engines.native.model_runner import (
    ModelRunner,
    StepBroadcast,
    allocate_kv_cache,
    kv_bytes_per_token,
)
from splitserve.generator.engines.native.ops import layer_ops
from splitserve.generator.engines.native.weights import load_weights

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)


@dataclass
class DeviceSide:
    """The loaded model and its runner, with the KV cache's size in blocks."""

    config: ModelConfig
    runner: ModelRunner
    num_blocks: int
    block_size: int


def build_device_side(config: GeneratorConfig, tp: TensorParallel = SINGLE_DEVICE,
                      broadcast: StepBroadcast | None = None) -> DeviceSide:
    """Loads the weights, sizes and allocates the cache, and prepares (not yet captures) the CUDA graphs.

    Under tensor parallelism rank 0 passes `broadcast`, which hands each step's inputs to the other ranks.
    """
    model_config = ModelConfig.from_folder(config.model_path)
    _check_model(model_config, config)
    device = _device(config, tp)
    dtype = resolve_dtype(config.dtype, device)
    log.info("native engine: loading %s (%s) on %s as %s", config.model_path, model_config.architecture, device, dtype)
    weights = load_weights(config.model_path, model_config, device, dtype, tp)
    model = DecoderModel(model_config, weights, attention_backend(config.attention_backend, device),
                         config.max_total_tokens, tp, layer_ops(device))
    block_size = config.kv_page_size
    num_blocks = _num_blocks(config, model, device)
    log.info("native engine: KV cache of %d blocks x %d tokens (%.2f GiB)", num_blocks, block_size,
             num_blocks * block_size * kv_bytes_per_token(model) / 2**30)
    caches = allocate_kv_cache(model, num_blocks, block_size)
    graphs = device.type == "cuda" and config.cuda_graphs and isinstance(model.attention, _graph_safe_backends())
    runner = ModelRunner(model, caches, block_size, config.max_batch_size,
                         -(-config.max_total_tokens // block_size), use_cuda_graphs=graphs, broadcast=broadcast)
    return DeviceSide(model_config, runner, num_blocks, block_size)


def attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """"auto": the Triton kernel on CUDA, gathered SDPA elsewhere."""
    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return TorchPagedAttention()
    if name == "triton":
        from splitserve.generator.engines.native.attention_triton import TritonPagedAttention

        return TritonPagedAttention()
    raise ValueError(f"unknown attention backend {name!r} (auto, triton, torch)")


def _graph_safe_backends() -> tuple[type, ...]:
    try:
        from splitserve.generator.engines.native.attention_triton import TritonPagedAttention
    except ImportError:
        return ()
    return (TritonPagedAttention,)


def _device(config: GeneratorConfig, tp: TensorParallel) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and tp.size > 1:
        device = torch.device("cuda", tp.rank)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _check_model(model_config: ModelConfig, config: GeneratorConfig) -> None:
    window = model_config.sliding_window
    if window is not None and window < config.max_total_tokens:
        raise ValueError(f"the model uses sliding-window attention ({window} tokens), which the native engine does "
                         f"not implement: set --max-total-tokens <= {window}")


def _num_blocks(config: GeneratorConfig, model: DecoderModel, device: torch.device) -> int:
    """--kv-cache-tokens, or on CUDA --kv-cache-memory-fraction of the memory free after loading."""
    fraction = config.kv_cache_memory_fraction
    if fraction is None or device.type != "cuda":
        blocks = config.kv_cache_tokens // config.kv_page_size
    else:
        free, _ = torch.cuda.mem_get_info(device)
        blocks = int(free * fraction) // (kv_bytes_per_token(model) * config.kv_page_size)
    needed = -(-config.max_total_tokens // config.kv_page_size)
    if blocks < needed:
        raise ValueError(f"the KV cache holds {blocks * config.kv_page_size} tokens, less than one request's "
                         f"--max-total-tokens={config.max_total_tokens}")
    return blocks
