"""The native engine's own figures on a CUDA GPU, beside what `splitserve bench` measures end to end.

For a model folder (e.g. the Llama-3-8B-shaped random model from make_random_llama.py) it prints:
- ms per decode step (scheduler + inputs + CUDA graph + greedy sampling + the host copy) at batch
  1/64/128/256 with a 128-token context;
- the attention kernels side by side (Triton paged kernel vs SDPA over gathered blocks), decode and
  prefill, on the model's real shapes;
- prefill tok/s for 2,048-token prompts (eager, chunked by --max-batch-tokens);
- peak GPU memory and host RSS.
Writes native_figures.json into $OUT (or the current folder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import replace

import torch

from splitserve.generator.config import GeneratorConfig
from splitserve.generator.engines.native.attention import AttentionMetadata, TorchPagedAttention
from splitserve.generator.engines.native.attention_triton import TritonPagedAttention
from splitserve.generator.engines.native.block_manager import BlockManager
from splitserve.generator.engines.native.loading import DeviceSide, build_device_side
from splitserve.generator.engines.native.scheduler import Scheduler
from splitserve.generator.engines.native.sequence import Sequence

RESULTS: dict[str, object] = {}


def record(key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "native_figures.json"), "w") as handle:
        json.dump(RESULTS, handle, indent=1)


def decode_step_ms(side: DeviceSide, batch: int, context: int, steps: int = 30) -> float:
    """Median wall time of one decode step, everything the engine thread does included."""
    scheduler = Scheduler(BlockManager(side.num_blocks, side.block_size), batch, max(batch, 8192))
    for i in range(batch):
        scheduler.add(Sequence(i, [(i * 7 + j) % 1000 + 10 for j in range(context)], context, steps + 5))
    while any(s.num_computed_tokens < s.num_tokens - 1 for s in scheduler.running) or scheduler.num_waiting:
        out = scheduler.schedule()
        scheduler.update(out, side.runner.execute(out).token_ids)  # prefill (and the first tokens)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = scheduler.schedule()
        scheduler.update(out, side.runner.execute(out).token_ids)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def prefill_tok_s(side: DeviceSide, prompt_len: int, num_prompts: int, budget: int) -> float:
    scheduler = Scheduler(BlockManager(side.num_blocks, side.block_size), num_prompts, budget)
    for i in range(num_prompts):
        scheduler.add(Sequence(i, [(i * 13 + j) % 1000 + 10 for j in range(prompt_len)], prompt_len, 1))
    torch.cuda.synchronize()
    start = time.perf_counter()
    while scheduler.has_work:
        out = scheduler.schedule()
        scheduler.update(out, side.runner.execute(out).token_ids)
    torch.cuda.synchronize()
    return prompt_len * num_prompts / (time.perf_counter() - start)


def attention_kernels(side: DeviceSide) -> None:
    """Both backends on the model's head shapes: 256 decodes at 256 context, and 4 x 2,048-token prefills."""
    model = side.runner.model
    k_cache, v_cache = side.runner.kv_caches[0]
    k_cache.normal_(), v_cache.normal_()  # never time attention on zeros
    heads, dim, bs = model.num_heads, model.config.head_dim, side.block_size
    for name, num_seqs, q_len, ctx in (("decode_b256_ctx256", 256, 1, 256), ("prefill_4x2048", 4, 2048, 2048)):
        blocks_per_seq = -(-ctx // bs)
        tables = torch.randperm(side.num_blocks, device="cuda")[:num_seqs * blocks_per_seq].int().view(num_seqs, -1)
        q = torch.randn(num_seqs * q_len, heads, dim, device="cuda", dtype=k_cache.dtype)
        starts = torch.arange(0, num_seqs + 1, device="cuda", dtype=torch.int32) * q_len
        meta = AttentionMetadata(torch.zeros(1, device="cuda", dtype=torch.long), starts,
                                 torch.full((num_seqs,), ctx, device="cuda", dtype=torch.int32), tables, q_len, ctx)
        outs = {}
        for backend_name, backend in (("triton", TritonPagedAttention()), ("torch_sdpa", TorchPagedAttention())):
            outs[backend_name] = backend(q, k_cache, v_cache, meta, dim ** -0.5)
            ms = triton_bench(lambda b=backend, q=q, meta=meta: b(q, k_cache, v_cache, meta, dim ** -0.5))
            record(f"attention_{name}_{backend_name}_ms", round(ms, 4))
        error = (outs["triton"].float() - outs["torch_sdpa"].float()).norm() / outs["torch_sdpa"].float().norm()
        record(f"attention_{name}_relative_error", float(error))


def triton_bench(fn: object) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--kv-cache-tokens", type=int, default=256 * 2304)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    config = GeneratorConfig(args.model, "bench", engine="native", device="cuda", dtype="bfloat16",
                             max_batch_size=args.max_batch_size, kv_cache_tokens=args.kv_cache_tokens,
                             max_total_tokens=2304, max_input_tokens=2048, max_new_tokens=256, kv_page_size=16,
                             max_batch_tokens=args.max_batch_tokens)
    record("gpu", torch.cuda.get_device_name(0))
    record("torch", torch.__version__)
    started = time.perf_counter()
    side = build_device_side(config)
    record("load_s", round(time.perf_counter() - started, 1))
    started = time.perf_counter()
    side.runner.capture_graphs()
    record("graph_capture_s", round(time.perf_counter() - started, 1))
    for batch in (1, 64, 128, 256):
        ms = decode_step_ms(side, batch, 128)
        record(f"decode_b{batch}_ms_per_step", round(ms, 3))
        record(f"decode_b{batch}_tok_per_s", round(batch / ms * 1e3))
    attention_kernels(side)
    record("prefill_2048_tok_per_s", round(prefill_tok_s(side, 2048, 16, config.max_batch_tokens)))
    record("prefill_128_x256_tok_per_s", round(prefill_tok_s(side, 128, 256, config.max_batch_tokens)))
    eager = build_eager_runner(config, side)
    record("decode_b256_eager_ms_per_step", round(decode_step_ms(eager, 256, 128, steps=10), 3))
    record("peak_gpu_GiB", round(torch.cuda.max_memory_allocated() / 2**30, 2))
    record("kv_cache_GiB", round(sum(k.numel() + v.numel() for k, v in side.runner.kv_caches) * 2 / 2**30, 2))
    record("host_rss_peak_GiB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
    print("TABLE", json.dumps(RESULTS))


def build_eager_runner(config: GeneratorConfig, side: DeviceSide) -> DeviceSide:
    """The same weights and cache without CUDA graphs (what graphs buy at batch 256)."""
    from splitserve.generator.engines.native.model_runner import ModelRunner

    runner = ModelRunner(side.runner.model, side.runner.kv_caches, side.block_size, config.max_batch_size,
                         -(-config.max_total_tokens // side.block_size), use_cuda_graphs=False)
    return replace(side, runner=runner)


if __name__ == "__main__":
    main()
