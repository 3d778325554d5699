"""The native engine's Triton kernels against the plain-PyTorch reference, in Triton's CPU interpreter.

The same kernels run compiled on CUDA; here TRITON_INTERPRET=1 executes them with numpy, so CI checks
their indexing (paged blocks, GQA stacking, causal masks, padding rows) without a GPU.
"""

from __future__ import annotations

import importlib
import os
import random
import sys
from types import ModuleType

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("on CUDA the kernels run compiled, in the engine tests", allow_module_level=True)
if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton was imported before the interpreter could be switched on", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # read when triton and each @triton.jit are imported: before them
pytest.importorskip("triton")

from splitserve.generator.engines.native.attention import AttentionMetadata, TorchPagedAttention
from splitserve.generator.engines.native.layers import Rotary
from splitserve.generator.engines.native.model_config import ModelConfig
from splitserve.generator.engines.native.ops import TorchOps


def interpreted(name: str) -> ModuleType:
    return importlib.import_module(f"splitserve.generator.engines.native.{name}")


@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    return interpreted("fused_triton")


def paged_batch(seqs: list[tuple[int, int]], heads: int, kv_heads: int, dim: int, block_size: int,
                padding_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random caches and queries for sequences given as (query length, context length), blocks shuffled."""
    generator = torch.Generator().manual_seed(len(seqs))
    num_blocks = sum(-(-ctx // block_size) for _, ctx in seqs) + 4
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=generator)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=generator)
    free = list(range(num_blocks))
    random.Random(7).shuffle(free)
    tables = torch.zeros(len(seqs) + padding_rows, 8, dtype=torch.int32)
    for i, (_, ctx) in enumerate(seqs):
        for b in range(-(-ctx // block_size)):
            tables[i, b] = free.pop()
    starts = [0]
    for q_len, _ in seqs:
        starts.append(starts[-1] + q_len)
    starts += [starts[-1]] * padding_rows  # padding rows: no queries (as in a CUDA-graph bucket)
    q = torch.randn(starts[-1], heads, dim, generator=generator)
    meta = AttentionMetadata(torch.zeros(starts[-1], dtype=torch.long), torch.tensor(starts, dtype=torch.int32),
                             torch.tensor([c for _, c in seqs] + [0] * padding_rows, dtype=torch.int32), tables,
                             max(q for q, _ in seqs), max(c for _, c in seqs))
    return q, k_cache, v_cache, meta


@pytest.mark.parametrize(("seqs", "heads", "kv_heads"), [
    ([(1, 5), (1, 33), (1, 1), (1, 64)], 8, 2),  # decodes, GQA group 4
    ([(20, 20), (7, 50), (17, 40), (1, 9)], 8, 2),  # prefill, prefill after a cached prefix, mixed with a decode
    ([(33, 70), (1, 16)], 9, 3),  # the default model's group of 3 (padded to the 16-row tile)
])
def test_paged_attention_kernel_matches_sdpa(seqs: list[tuple[int, int]], heads: int, kv_heads: int) -> None:
    backend = interpreted("attention_triton").TritonPagedAttention()
    q, k_cache, v_cache, meta = paged_batch(seqs, heads, kv_heads, 64, 16)
    expected = TorchPagedAttention()(q, k_cache, v_cache, meta, 0.125)
    assert torch.allclose(backend(q, k_cache, v_cache, meta, 0.125), expected, atol=1e-5)


def test_paged_attention_kernel_ignores_padding_rows() -> None:
    backend = interpreted("attention_triton").TritonPagedAttention()
    q, k_cache, v_cache, meta = paged_batch([(1, 30), (1, 3)], 8, 2, 64, 16, padding_rows=2)
    out = backend(q, k_cache, v_cache, meta, 0.125)
    real = AttentionMetadata(meta.slot_mapping, meta.query_start[:3], meta.seq_lens[:2], meta.block_tables[:2], 1, 30)
    assert torch.allclose(out, TorchPagedAttention()(q, k_cache, v_cache, real, 0.125), atol=1e-5)


def test_add_rms_norm_matches_the_reference(kernels: ModuleType) -> None:
    x, residual, weight = torch.randn(5, 96), torch.randn(5, 96), torch.rand(96) + 0.5
    expected_out, expected_residual = TorchOps().add_rms_norm(x, residual.clone(), weight, 1e-5)
    out, new_residual = kernels.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.allclose(out, expected_out, atol=1e-5) and torch.allclose(new_residual, expected_residual)
    first_out, first_residual = kernels.add_rms_norm(x, None, weight, 1e-5)
    assert torch.allclose(first_out, TorchOps().add_rms_norm(x, None, weight, 1e-5)[0], atol=1e-5)
    assert first_residual is x


def test_rope_and_cache_write_match_the_reference(kernels: ModuleType) -> None:
    config = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 256,
                                    "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                                    "intermediate_size": 8, "rope_theta": 500000.0, "rope_scaling": {
                                        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}})
    rotary = Rotary(config, 128, torch.device("cpu"), torch.float32)
    qkv, positions = torch.randn(6, (4 + 2 * 2) * 64), torch.tensor([0, 1, 2, 40, 77, 127])
    slots = torch.tensor([3, 17, 5, 30, 0, 31])
    caches = [(torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)) for _ in range(2)]
    expected_q = TorchOps().rope_write_kv(qkv, positions, rotary, caches[0], slots, 4, 2, 64)
    q = kernels.rope_write_kv(qkv, positions, rotary.cos, rotary.sin, caches[1][0], caches[1][1], slots, 4, 2, 64)
    assert torch.allclose(q, expected_q, atol=1e-5)
    assert torch.allclose(caches[1][0], caches[0][0], atol=1e-5) and torch.equal(caches[1][1], caches[0][1])


def test_silu_and_mul_matches_the_reference(kernels: ModuleType) -> None:
    gate_up = torch.randn(3, 2 * 1500)  # wider than one 1024-column block
    assert torch.allclose(kernels.silu_and_mul(gate_up), TorchOps().silu_and_mul(gate_up), atol=1e-6)
