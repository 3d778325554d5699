"""Both tiers over a tensor-parallel native generator (rank 0 serves gRPC, rank 1 spawned): streaming,
cancellation, the SIGTERM drain, and a killed worker rank (UNAVAILABLE, then a non-zero exit, no hang).

On CPU (CI) the generator runs a small random Llama (its heads split two ways; the default model's do not)
over gloo. The same tests run on GPUs with SPLITSERVE_TP_MODEL (a model folder), SPLITSERVE_TP_DEVICE=cuda
and SPLITSERVE_TP_SIZE (deploy/gpu/check_tensor_parallel.sh).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.local_stack import free_port, wait_serving

from .native_support import write_split_llama
from .test_drain import read_rest, stop
from .test_generation import as_unary, greedy
from .test_service_lifecycle import spawn

pytestmark = pytest.mark.slow

TP_SIZE = int(os.environ.get("SPLITSERVE_TP_SIZE", "2"))
DEVICE = os.environ.get("SPLITSERVE_TP_DEVICE", "cpu")
LONG = 1500  # tokens: a stream still in flight when the test acts on it
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tp_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "SPLITSERVE_TP_MODEL" in os.environ:
        return Path(os.environ["SPLITSERVE_TP_MODEL"])
    model_dir: Path = request.getfixturevalue("model_dir")  # only here: a GPU host may lack the default model
    return write_split_llama(tmp_path_factory.mktemp("tp-llama"), model_dir)


@dataclass
class TpStack:
    generator: subprocess.Popen[bytes]
    tokenizer: subprocess.Popen[bytes]
    text: text_pb2_grpc.TextGenerationServiceStub

    def worker_ranks(self) -> list[psutil.Process]:
        """The generator's spawned ranks (multiprocessing's spawn children; not its resource tracker, nor
        torch.compile's worker pool on CUDA)."""
        return [c for c in psutil.Process(self.generator.pid).children() if "spawn_main" in " ".join(c.cmdline())]


@pytest.fixture
async def tp_stack(tp_model: Path) -> AsyncIterator[TpStack]:
    gen, tok = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    dtype = "float32" if DEVICE == "cpu" else "bfloat16"
    generator = spawn("generator", tp_model, "--engine", "native", "--device", DEVICE, "--dtype", dtype,
                      "--tensor-parallel-size", str(TP_SIZE), "--no-engine-process", "--address", gen,
                      "--metrics-port", "0",
                      "--max-total-tokens", "2048", "--max-new-tokens", "1800", "--kv-cache-tokens", "16384",
                      "--grace-seconds", "60")
    tokenizer = spawn("tokenizer", tp_model, "--address", tok, "--generator", gen, "--metrics-port", "0")
    try:
        await asyncio.to_thread(wait_serving, tok, [generator, tokenizer], START_TIMEOUT_S)
        async with grpc.aio.insecure_channel(tok) as channel:
            yield TpStack(generator, tokenizer, text_pb2_grpc.TextGenerationServiceStub(channel))
    finally:
        for process in (tokenizer, generator):
            await stop(process)


def _ranks_gone(ranks: list[psutil.Process]) -> bool:
    return not any(r.is_running() and r.status() != psutil.STATUS_ZOMBIE for r in ranks)


async def test_streams_equal_unary_and_a_cancel_frees_the_slot(tp_stack: TpStack) -> None:
    assert len(tp_stack.worker_ranks()) == TP_SIZE - 1
    request = greedy("The lighthouse keeper said", 24, ignore_eos=True)
    parts = [m async for m in tp_stack.text.GenerateStream(request)]
    whole = await tp_stack.text.Generate(as_unary(request))
    assert [t.id for p in parts for t in p.tokens] == [t.id for t in whole.tokens] and len(whole.tokens) == 24
    for _ in range(3):  # cancelled mid-stream, again and again: nothing is left holding a slot
        call = tp_stack.text.GenerateStream(greedy("Count:", LONG, ignore_eos=True))
        await call.read()
        call.cancel()
    again = await tp_stack.text.Generate(as_unary(request))
    assert [t.id for t in again.tokens] == [t.id for t in whole.tokens]


async def test_sigterm_drains_the_stream_then_every_rank_exits(tp_stack: TpStack) -> None:
    ranks = tp_stack.worker_ranks()
    call = tp_stack.text.GenerateStream(greedy("Once upon a time", 400, ignore_eos=True))
    await call.read()
    tp_stack.generator.terminate()
    assert (await read_rest(call)).usage.completion_tokens == 400
    assert await asyncio.to_thread(tp_stack.generator.wait, 60) == 0
    await asyncio.sleep(1.0)
    assert _ranks_gone(ranks)


@pytest.mark.skipif(TP_SIZE < 2, reason="TP=1 has no worker rank to kill")
async def test_a_killed_worker_rank_ends_streams_unavailable_and_the_generator_exits_non_zero(
        tp_stack: TpStack) -> None:
    call = tp_stack.text.GenerateStream(greedy("Tell me a long story:", LONG, ignore_eos=True))
    await call.read()
    tp_stack.worker_ranks()[0].kill()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(read_rest(call), 60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await asyncio.to_thread(tp_stack.generator.wait, 60) != 0
    with pytest.raises(grpc.aio.AioRpcError) as later:
        await tp_stack.text.Generate(pb.GenerateRequest(prompt="Hi", stopping=pb.StoppingCriteria(max_new_tokens=2)))
    assert later.value.code() == grpc.StatusCode.UNAVAILABLE
