"""Tensor-parallel parity of the native engine, TP=N against TP=1, in one run (prints a table; exit 1 if unmet).

1. Token-exact greedy: 8 prompts x 64 new tokens in fp32 through `NativeEngine` (rank 0 in this process, the
   other ranks spawned, as the generator serves). The model is a random Llama whose heads split N ways, with
   the default model's tokenizer: the default model's 9 heads and 3 KV heads split no way but one.
2. Teacher-forced top-1 agreement (target >= 99%): `--model` (e.g. the Llama-3-8B-shaped random model of
   make_random_llama.py) in bf16, 8 sequences of fixed random tokens fed one position per step; at every
   position the argmax of TP=N's logits is compared with TP=1's. Every rank runs the same steps (runner level).

    python deploy/gpu/tp_parity.py --tp 2 --device cuda --model /tmp/llama3-8b-random
    python deploy/gpu/tp_parity.py --tp 2 --device cpu          # part 1 only, gloo (a check of the script)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splitserve.common.model_store import DEFAULT_MODEL_NAME, default_cache_dir, ensure_default_model
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.generator.engines.native.layers import SINGLE_DEVICE, TensorParallel
from splitserve.generator.engines.native.loading import build_device_side
from splitserve.generator.engines.native.model_runner import ModelRunner
from splitserve.generator.engines.native.scheduler import ScheduledChunk
from splitserve.generator.engines.native.sequence import Sequence
from splitserve.generator.engines.native.step_inputs import build_step_inputs
from splitserve.generator.validation import validate_request
from splitserve.link.types import GenerationRequest

PROMPTS = ["The capital of France is", "List three colours:", "def fibonacci(n):", "Once upon a time",
           "The best way to learn a language is", "Water boils at", "import numpy as np\n", "Dear Sir or Madam,"]
NEW_TOKENS = 64
BLOCK_SIZE = 16
FORCED_PREFIX, FORCED_LEN, FORCED_SEQS = 16, 128, 8  # teacher forcing: 8 x 112 predicted positions
AGREEMENT_TARGET = 0.99
SPAWN_TIMEOUT_S = 600.0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def write_split_model(folder: Path, tokenizer_dir: Path) -> Path:
    """A random fp32 Llama (8 heads, 4 KV heads: splits 1, 2 or 4 ways) with the default tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                         initializer_range=0.05, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def engine_config(model: Path, device: str, dtype: str, tp: int) -> GeneratorConfig:
    return GeneratorConfig(str(model), DEFAULT_MODEL_NAME, engine="native", device=device, dtype=dtype,
                           max_batch_size=8, kv_page_size=BLOCK_SIZE, kv_cache_tokens=8 * 256, max_total_tokens=256,
                           max_input_tokens=128, tensor_parallel_size=tp)


async def greedy_tokens(config: GeneratorConfig, prompts: list[list[int]]) -> list[list[int]]:
    """Every prompt's 64 greedy tokens, all in flight together (continuous batching, as served)."""
    engine = NativeEngine(config, lambda serving: None)
    await asyncio.wait_for(engine.start(), SPAWN_TIMEOUT_S)

    async def one(i: int, prompt: list[int]) -> list[int]:
        request = GenerationRequest(f"p{i}", prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        return [t.token_id async for chunk in engine.generate(validate_request(request, engine.info))
                for t in chunk.tokens]

    try:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
    finally:
        await engine.stop()


def forced_sequences(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(100, vocab, (FORCED_SEQS, FORCED_LEN), generator=generator).tolist()


def forced_argmax(runner: ModelRunner, sequences: list[list[int]]) -> torch.Tensor:
    """[seqs, FORCED_LEN - FORCED_PREFIX]: each position's argmax, the true token fed at every step."""
    blocks = -(-FORCED_LEN // BLOCK_SIZE)
    seqs = [Sequence(i, s[:FORCED_PREFIX], FORCED_PREFIX, FORCED_LEN,
                     block_table=list(range(i * blocks, (i + 1) * blocks))) for i, s in enumerate(sequences)]
    steps = []
    with torch.inference_mode():
        for position in range(FORCED_PREFIX, FORCED_LEN):
            chunks = [ScheduledChunk(s, s.num_computed_tokens, s.num_tokens - s.num_computed_tokens) for s in seqs]
            steps.append(runner.forward(build_step_inputs(chunks, BLOCK_SIZE), use_graph=False).argmax(-1).cpu())
            for seq, tokens in zip(seqs, sequences, strict=True):
                seq.num_computed_tokens = seq.num_tokens
                seq.token_ids.append(tokens[position])
    return torch.stack(steps, dim=1)


def _forced_rank(rank: int, config: GeneratorConfig, size: int, store: str, out: str) -> None:
    """One rank of the TP=N teacher-forced run (spawned); rank 0 saves the argmaxes."""
    backend = "nccl" if config.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        runner = build_device_side(config, TensorParallel(rank, size)).runner
        result = forced_argmax(runner, forced_sequences(runner.model.config.vocab_size))
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def forced_argmax_split(config: GeneratorConfig, size: int, scratch: Path) -> torch.Tensor:
    out = scratch / "forced.pt"
    context = mp.start_processes(_forced_rank, args=(config, size, str(scratch / "store"), str(out)), nprocs=size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError("the TP ranks did not finish in time")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(10)
    result: torch.Tensor = torch.load(out)
    return result


def check_tokens(tp: int, device: str, scratch: Path, tokenizer_dir: Path) -> bool:
    from transformers import AutoTokenizer

    model = write_split_model(scratch / "split-llama", tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    single = asyncio.run(greedy_tokens(engine_config(model, device, "float32", 1), prompts))
    split = asyncio.run(greedy_tokens(engine_config(model, device, "float32", tp), prompts))
    same = sum(a == b for a, b in zip(single, split, strict=True))
    first_diff = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
                  for a, b in zip(single, split, strict=True)]
    print(f"| greedy, fp32, {len(prompts)} prompts x {NEW_TOKENS} tokens | TP={tp} vs TP=1 | "
          f"{same} of {len(prompts)} identical (first differing position per prompt: {first_diff}) |", flush=True)
    return same == len(prompts)


def check_forced(tp: int, device: str, model: Path, scratch: Path) -> bool:
    config = engine_config(model, device, "bfloat16", tp)
    runner = build_device_side(config, SINGLE_DEVICE).runner
    single = forced_argmax(runner, forced_sequences(runner.model.config.vocab_size))
    del runner
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    split = forced_argmax_split(config, tp, scratch)
    agreement = (single == split).float().mean().item()
    print(f"| teacher-forced top-1, bf16, {model.name}, {single.numel()} positions | TP={tp} vs TP=1 | "
          f"{100 * agreement:.2f} % agree (target {100 * AGREEMENT_TARGET:.0f} %) |", flush=True)
    return agreement >= AGREEMENT_TARGET


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", type=Path, default=None, help="bf16 model for part 2 (skipped without it)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a folder with the default model's tokenizer (default: the default model's own)")
    args = parser.parse_args()
    tokenizer_dir = args.tokenizer or ensure_default_model(default_cache_dir())
    print("| check | ranks | result |\n|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="splitserve-tp-") as scratch:
        ok = check_tokens(args.tp, args.device, Path(scratch), tokenizer_dir)
        if args.model is not None:
            ok = check_forced(args.tp, args.device, args.model, Path(scratch)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
