"""Tensor parallelism for the native engine: rank 0's step broadcaster and the worker ranks' loop.

Rank 0 is the generator process: it serves gRPC, schedules and samples. `RankGroup.launch` spawns
ranks 1..N-1 on this host; each joins the process group, loads its shard and then loops in
`worker_main`: receive a step's inputs, run the same forward, never sample. A step crosses as two
broadcasts over a gloo group (the inputs are host arrays on every backend): a fixed header
(kind, graph or eager, sizes) and one int64 tensor holding every array. The forward's all-reduces
go over the default group: NCCL on CUDA (device = rank), gloo on CPU.

The forward collectives have a bounded timeout, and rank 0 watches the worker processes: a worker
that dies is reported once through `on_failure`, so the engine can end its streams and stop
instead of hanging. Workers exit when rank 0's process goes away.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Store, TCPStore  # what torch.distributed re-exports, visible to mypy

from splitserve.common.request_log import configure_logging
from splitserve.generator.engines.model_folder import resolve_device
from splitserve.generator.engines.native.layers import TensorParallel
from splitserve.generator.engines.native.loading import build_device_side
from splitserve.generator.engines.native.model_config import ModelConfig
from splitserve.generator.engines.native.model_runner import ModelRunner
from splitserve.generator.engines.native.step_inputs import StepInputs

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # every rank runs on this host
STEP_TIMEOUT = timedelta(seconds=60)  # one step's all-reduces: a rank stuck longer than this has failed
IDLE_TIMEOUT = timedelta(days=365)  # workers wait on the step header for as long as rank 0 has no work
START_TIMEOUT = timedelta(minutes=30)  # loading a large shard from a slow disk
STOP_TIMEOUT_S = 30.0
POLL_S = 0.2

_STOP, _STEP = 0, 1
_HEADER_LEN = 8  # kind, use_graph, tokens, sequences, block-table width, sampled rows, max query, max seq len

# Reports a failed group once, from whichever thread noticed it.
FailureListener = Callable[[str], None]


class TensorParallelFailure(RuntimeError):
    """A rank of the tensor-parallel group died or fell out of step; the group cannot serve any more."""


def check_tensor_parallel(config: GeneratorConfig) -> None:
    """Raises ValueError, before any process starts, when the model or the host cannot be split `size` ways."""
    size = config.tensor_parallel_size
    if config.engine_process:
        raise ValueError("--engine-process cannot run the native engine's tensor-parallel workers "
                         "(its engine process may not start processes of its own)")
    model = ModelConfig.from_folder(config.model_path)
    tp = TensorParallel(0, size)
    try:
        for total, name in ((model.num_heads, "num_attention_heads"), (model.num_kv_heads, "num_key_value_heads"),
                            (model.intermediate_size, "intermediate_size")):
            tp.shard(total, name)
    except ValueError as error:
        raise ValueError(f"--tensor-parallel-size {size}: the model cannot be split: {error}") from error
    if resolve_device(config.device).type == "cuda" and torch.cuda.device_count() < size:
        raise ValueError(f"--tensor-parallel-size {size} needs {size} GPUs; {torch.cuda.device_count()} visible")


# -- one step on the wire ---------------------------------------------------------------------------


def pack_step(inputs: StepInputs, use_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(header [8], payload): every array of the step in one int64 tensor, in StepInputs' field order."""
    n, width = inputs.block_tables.shape
    header = torch.tensor([_STEP, int(use_graph), inputs.input_ids.shape[0], n, width, inputs.sample_rows.shape[0],
                           inputs.max_query_len, inputs.max_seq_len], dtype=torch.int64)
    arrays = (inputs.input_ids, inputs.positions, inputs.slot_mapping, inputs.query_start, inputs.seq_lens,
              inputs.block_tables.ravel(), inputs.sample_rows)
    return header, torch.from_numpy(np.concatenate(arrays, dtype=np.int64))


def unpack_step(header: list[int], payload: torch.Tensor) -> StepInputs:
    """The inverse of `pack_step` (the header as a list of ints)."""
    _, _, tokens, n, width, samples, max_query_len, max_seq_len = header
    flat = payload.numpy()
    parts = np.split(flat, np.cumsum([tokens, tokens, tokens, n + 1, n, n * width]))
    ids, positions, slots, query_start, seq_lens, tables, sample_rows = parts
    assert sample_rows.shape[0] == samples  # rank 0 packed these sizes itself
    return StepInputs(ids, positions, slots, query_start.astype(np.int32), seq_lens.astype(np.int32),
                      tables.astype(np.int32).reshape(n, width), sample_rows, max_query_len, max_seq_len)


def payload_length(header: list[int]) -> int:
    _, _, tokens, n, width, samples, _, _ = header
    return 3 * tokens + 2 * n + 1 + n * width + samples


# -- rank 0 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerArgs:
    """What a spawned worker needs to join the group (picklable)."""

    rank: int
    size: int
    store_port: int
    config: GeneratorConfig
    parent_pid: int
    log_level: str


class RankGroup:
    """Rank 0's side of the group: the worker processes, the step broadcaster, the watch on the workers."""

    def __init__(self, config: GeneratorConfig, on_failure: FailureListener) -> None:
        self.size = config.tensor_parallel_size
        self.tp = TensorParallel(0, self.size)
        self._on_failure = on_failure
        self._failed = False
        self._stopping = False
        self._lock = threading.Lock()
        self._store = TCPStore(HOST, 0, self.size, is_master=True, timeout=START_TIMEOUT,
                                    wait_for_workers=False)  # port 0: the OS picks a free one
        ctx = multiprocessing.get_context("spawn")  # CUDA needs a clean process
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self._workers: list[BaseProcess] = [
            ctx.Process(target=worker_main, name=f"splitserve-tp-rank-{rank}", daemon=True,
                        args=(WorkerArgs(rank, self.size, self._store.port, config, os.getpid(), level),))
            for rank in range(1, self.size)]
        self._control: dist.ProcessGroup | None = None
        self._backend = _backend(config)

    @classmethod
    def launch(cls, config: GeneratorConfig, on_failure: FailureListener) -> RankGroup:
        """Starts the workers and joins the group as rank 0; call `wait_ready` after loading rank 0's shard."""
        group = cls(config, on_failure)
        for process in group._workers:
            process.start()
        try:
            group._control = group._while_workers_live(lambda: _join(group._store, 0, group.size, group._backend),
                                                       "joining the process group")
        except BaseException:
            group._failed = True  # nothing to tell the workers: kill them
            group.stop()
            raise
        threading.Thread(target=group._watch, name="tp-worker-watch", daemon=True).start()
        return group

    def wait_ready(self) -> None:
        """Returns once every worker has loaded its shard (before the ranks capture graphs together)."""
        self._while_workers_live(lambda: _loaded(self._control), "loading their shards")

    def send(self, inputs: StepInputs, use_graph: bool) -> None:
        """Broadcasts one step's inputs to the workers (called by the runner before its own forward)."""
        header, payload = pack_step(inputs, use_graph)
        dist.broadcast(header, 0, group=self._control)
        dist.broadcast(payload, 0, group=self._control)

    def fail(self, error: BaseException) -> None:
        """A forward failed after its inputs went out: the ranks' collectives are out of step for good."""
        self._report(f"rank 0's forward failed after broadcasting its inputs ({type(error).__name__}: {error})")

    def stop(self) -> None:
        """Tells the workers to exit (if the group still works), reaps them, and leaves the process group."""
        self._stopping = True
        told = self._control is not None and not self._failed and all(p.is_alive() for p in self._workers)
        if told:
            try:
                dist.broadcast(torch.tensor([_STOP, *[0] * (_HEADER_LEN - 1)], dtype=torch.int64), 0,
                               group=self._control)
            except RuntimeError:
                log.warning("tensor parallel: a worker did not take the stop message; killing it")
                told = False
        _reap(self._workers, STOP_TIMEOUT_S if told else 0.0)  # a failed group's workers may be stuck in a collective
        if dist.is_initialized():
            dist.destroy_process_group()

    def _watch(self) -> None:
        while not self._stopping:
            wait([p.sentinel for p in self._workers], timeout=POLL_S)
            dead = self._dead_worker()
            if dead is not None and not self._stopping:
                self._report(dead)
                return

    def _dead_worker(self) -> str | None:
        for rank, process in enumerate(self._workers, start=1):
            if process.exitcode is not None:
                return f"tensor-parallel worker rank {rank} exited with code {process.exitcode}"
        return None

    def _report(self, reason: str) -> None:
        with self._lock:
            if self._failed:
                return
            self._failed = True
        log.error("%s", reason)
        self._on_failure(reason)

    def _while_workers_live(self, work: Callable[[], dist.ProcessGroup | None], what: str) -> dist.ProcessGroup | None:
        """Runs `work` (which waits on every rank) on a thread of its own, failing at once if a worker exits."""
        result: list[dist.ProcessGroup | None] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(work())
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=run, name="tp-join", daemon=True)  # daemon: a dead peer may leave it stuck
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            dead = self._dead_worker()
            if dead is not None and thread.is_alive():
                raise TensorParallelFailure(f"{dead} while {what} (its log above says why)")
        if errors:
            wait([p.sentinel for p in self._workers], timeout=1.0)  # a peer's socket closes just before it exits
            dead = self._dead_worker()
            if dead is not None:
                raise TensorParallelFailure(f"{dead} while {what} (its log above says why)") from errors[0]
            raise errors[0]
        return result[0]


def _backend(config: GeneratorConfig) -> str:
    return "nccl" if resolve_device(config.device).type == "cuda" else "gloo"


def _join(store: Store, rank: int, size: int, backend: str) -> dist.ProcessGroup:
    """Joins the default group (the forward's collectives) and returns the gloo group that carries steps."""
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=STEP_TIMEOUT)
    control: dist.ProcessGroup | None = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    assert control is not None  # every rank is a member
    return control


def _loaded(control: dist.ProcessGroup | None) -> None:
    """Every rank has its shard: a barrier bounded by START_TIMEOUT (the control group's own has no end)."""
    dist.monitored_barrier(group=control, timeout=START_TIMEOUT)


def _reap(processes: list[BaseProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(STOP_TIMEOUT_S)


# -- ranks 1..N-1 ---------------------------------------------------------------------------------


def worker_main(args: WorkerArgs) -> None:
    """Entry point of a worker rank (multiprocessing, spawn): join, load the shard, run steps until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: rank 0 stops us
    configure_logging(args.log_level)
    _exit_with_parent(args.parent_pid)
    store = TCPStore(HOST, args.store_port, args.size, is_master=False, timeout=START_TIMEOUT)
    control = _join(store, args.rank, args.size, _backend(args.config))
    try:
        runner = build_device_side(args.config, TensorParallel(args.rank, args.size)).runner
        _loaded(control)
        runner.capture_graphs()  # with rank 0, bucket by bucket: the captures' all-reduces pair up
        steps = _serve(runner, control)
        log.info("tensor-parallel rank %d: stopping after %d steps", args.rank, steps)
    finally:
        dist.destroy_process_group()


@torch.inference_mode()
def _serve(runner: ModelRunner, control: dist.ProcessGroup) -> int:
    steps = 0
    header = torch.empty(_HEADER_LEN, dtype=torch.int64)
    while True:
        dist.broadcast(header, 0, group=control)
        fields = header.tolist()
        if fields[0] == _STOP:
            return steps
        payload = torch.empty(payload_length(fields), dtype=torch.int64)
        dist.broadcast(payload, 0, group=control)
        runner.forward(unpack_step(fields, payload), use_graph=bool(fields[1]))  # rank 0 samples; we only compute
        steps += 1


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive rank 0 (killed, it cannot send the stop message)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="tp-parent-watch", daemon=True).start()
