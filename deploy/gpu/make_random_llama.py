"""Writes a Llama-3-8B-shaped model with random bf16 weights (no download) and the default tokenizer.

The decoder (32 layers, hidden 4096, MLP 14336, 32 heads, 8 KV heads, RoPE theta 500k) is
Llama-3-8B's. The vocabulary is the tokenizer's (49,152 for SmolLM2) rather than 128,256, so that
every token the random model emits can be detokenized by the tokenizer tier.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


def default_tokenizer_dir() -> Path:
    """The default model's folder from the splitserve cache (fetched once, offline afterwards)."""
    from splitserve.common.model_store import default_cache_dir, ensure_default_model

    return ensure_default_model(default_cache_dir())


def llama3_8b_config(vocab_size: int, bos: int | None, eos: int | None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos, torch_dtype="bfloat16",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: splitserve's)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer or default_tokenizer_dir()))
    config = llama3_8b_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU takes seconds instead of minutes on the CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"wrote {params:.2f}B-parameter random Llama to {args.out} in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
