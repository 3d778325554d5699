"""Tensor parallelism in the native engine on CPU (gloo): TP=2 equals TP=1 for the model and the engine.

The default model's 9 heads and 3 KV heads do not split two ways, so these tests write a small random
Llama (4 heads, 2 KV heads) with the default model's tokenizer. Every spawned process is joined or
killed before a test ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splitserve.cli import main
from splitserve.common.errors import EngineUnavailable
from splitserve.generator.config import GeneratorConfig
from splitserve.generator.engines.native.engine import NativeEngine
from splitserve.generator.engines.native.layers import SINGLE_DEVICE, TensorParallel
from splitserve.generator.engines.native.loading import build_device_side
from splitserve.generator.engines.native.model_runner import ModelRunner
from splitserve.generator.engines.native.scheduler import ScheduledChunk
from splitserve.generator.engines.native.sequence import Sequence
from splitserve.generator.engines.native.step_inputs import build_step_inputs
from splitserve.generator.engines.native.tensor_parallel import TensorParallelFailure, pack_step, unpack_step
from splitserve.generator.validation import validate_request
from splitserve.link.types import GenerationChunk, GenerationRequest

from .conftest import generator_config
from .native_support import PROMPTS, run, write_split_llama

NEW_TOKENS = 16
BLOCK_SIZE = 16
SPAWN_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def tiny_model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_split_llama(tmp_path_factory.mktemp("tiny-llama"), model_dir)


def _config(model: Path, **overrides: object) -> GeneratorConfig:
    settings: dict[str, object] = {"engine": "native", "kv_page_size": BLOCK_SIZE, "device": "cpu",
                                   "dtype": "float32", **overrides}
    return generator_config(model, **settings)


# -- the model, rank by rank ----------------------------------------------------------------------


def _greedy(runner: ModelRunner, prompts: list[list[int]]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Prefills every prompt in one step, then decodes them together; the logits of each step and the tokens."""
    blocks_per_seq = -(-(max(map(len, prompts)) + NEW_TOKENS) // BLOCK_SIZE)
    seqs = [Sequence(i, list(p), len(p), NEW_TOKENS, block_table=list(range(i * blocks_per_seq,
                                                                            (i + 1) * blocks_per_seq)))
            for i, p in enumerate(prompts)]
    steps: list[torch.Tensor] = []
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):
            chunks = [ScheduledChunk(s, s.num_computed_tokens, s.num_tokens - s.num_computed_tokens) for s in seqs]
            logits = runner.forward(build_step_inputs(chunks, BLOCK_SIZE), use_graph=False)
            steps.append(logits.clone())
            for seq, token in zip(seqs, logits.argmax(-1).tolist(), strict=True):
                seq.num_computed_tokens = seq.num_tokens
                seq.token_ids.append(token)
    return steps, [s.output_token_ids for s in seqs]


def _parity_rank(rank: int, config: GeneratorConfig, store: str, out: str) -> None:
    """One rank of the TP=2 run (spawned): load the shard, run the same steps, rank 0 saves what it saw."""
    torch.set_num_threads(1)  # two ranks on a small host
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        runner = build_device_side(config, TensorParallel(rank, 2)).runner
        result = _greedy(runner, PROMPTS[:4])
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _spawn_two(config: GeneratorConfig, tmp_path: Path) -> tuple[list[torch.Tensor], list[list[int]]]:
    out = tmp_path / "rank0.pt"
    context = mp.start_processes(_parity_rank, args=(config, str(tmp_path / "store"), str(out)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            assert time.monotonic() < deadline, "the TP=2 ranks did not finish in time"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(10)
    steps, tokens = torch.load(out)
    return steps, tokens


def test_two_ranks_match_one_in_logits_and_greedy_tokens(tiny_model: Path, tmp_path: Path) -> None:
    config = _config(tiny_model)
    single_steps, single_tokens = _greedy(build_device_side(config, SINGLE_DEVICE).runner, PROMPTS[:4])
    split_steps, split_tokens = _spawn_two(config, tmp_path)
    assert split_tokens == single_tokens
    assert len(split_steps) == NEW_TOKENS
    for single, split in zip(single_steps, split_steps, strict=True):  # the prefill, then every decode
        torch.testing.assert_close(split, single, atol=1e-5, rtol=0)


def test_a_step_survives_the_wire() -> None:
    seq = Sequence(1, list(range(40)), 40, 8, block_table=[3, 5, 7])
    inputs = build_step_inputs([ScheduledChunk(seq, 16, 24), ScheduledChunk(Sequence(2, [9, 8], 2, 8, block_table=[1]),
                                                                             1, 1)], BLOCK_SIZE)
    header, payload = pack_step(inputs, use_graph=True)
    back = unpack_step(header.tolist(), payload)
    assert header.tolist()[1] == 1
    for name in ("input_ids", "positions", "slot_mapping", "query_start", "seq_lens", "block_tables", "sample_rows"):
        mine, theirs = getattr(inputs, name), getattr(back, name)
        assert mine.dtype == theirs.dtype and (mine == theirs).all(), name
    assert (back.max_query_len, back.max_seq_len) == (inputs.max_query_len, inputs.max_seq_len)


# -- the engine: rank 0 in this process, rank 1 spawned -------------------------------------------


async def test_the_engine_with_two_ranks_serves_what_one_rank_does(tiny_model: Path) -> None:
    alone = NativeEngine(_config(tiny_model), lambda serving: None)
    await alone.start()
    try:
        expected = [(await run(alone, p, NEW_TOKENS, ignore_eos=True)).token_ids for p in PROMPTS[:3]]
    finally:
        await alone.stop()
    split = NativeEngine(_config(tiny_model, tensor_parallel_size=2), lambda serving: None)
    try:
        await asyncio.wait_for(split.start(), SPAWN_TIMEOUT_S)
        batched = await asyncio.gather(*(run(split, p, NEW_TOKENS, ignore_eos=True) for p in PROMPTS[:3]))
    finally:
        await split.stop()
    assert [r.token_ids for r in batched] == expected


async def test_a_dead_worker_ends_streams_with_unavailable_and_the_engine_for_good(tiny_model: Path) -> None:
    health: list[bool] = []
    fatal = asyncio.Event()
    engine = NativeEngine(_config(tiny_model, tensor_parallel_size=2), health.append, on_fatal=fatal.set)
    try:
        await asyncio.wait_for(engine.start(), SPAWN_TIMEOUT_S)
        stream = engine.generate(_long_request(engine))
        await anext(stream)  # in flight
        assert engine._group is not None
        engine._group._workers[0].kill()
        with pytest.raises(EngineUnavailable):
            await asyncio.wait_for(_drain(stream), 30)
        await asyncio.wait_for(fatal.wait(), 30)
        assert health and health[-1] is False
        with pytest.raises(EngineUnavailable, match="rank 1 exited"):
            await run(engine, PROMPTS[0], 4)
    finally:
        with pytest.raises(TensorParallelFailure, match="rank 1 exited"):
            await asyncio.wait_for(engine.stop(), 60)


def _long_request(engine: NativeEngine) -> GenerationRequest:
    return validate_request(GenerationRequest("long", list(PROMPTS[1]), max_new_tokens=250, ignore_eos=True),
                            engine.info)


async def _drain(stream: AsyncGenerator[GenerationChunk, None]) -> None:
    async for _ in stream:
        pass


# -- start-up validation ----------------------------------------------------------------------------


def test_a_model_that_does_not_split_is_refused_at_start_up(model_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generator", "--model", str(model_dir), "--engine", "native", "--device", "cpu",
                 "--tensor-parallel-size", "2", "--address", "127.0.0.1:0", "--log-level", "WARNING"])
    assert code == 2
    assert "num_attention_heads=9 is not divisible by tensor_parallel_size=2" in capsys.readouterr().err
