"""Multi-GPU (tensor parallel) helpers: which MPI rank this process is, and what non-zero ranks do.

Under `mpirun -n N`, every rank loads its shard of a prebuilt engine; only rank 0 enqueues requests
and serves gRPC. The other ranks join the Executor's collective steps until rank 0 shuts it down.
The LLM API engine is launched differently: `trtllm-llmapi-launch` runs our process on rank 0 only
and turns the other ranks into TensorRT-LLM workers itself.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)

# Set by Open MPI, MPICH/Intel MPI (PMI) and PMIx launchers respectively.
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def mpi_rank() -> int:
    """This process's MPI rank (0 when not launched by MPI)."""
    return _first_int(_RANK_VARIABLES, 0)


def mpi_world_size() -> int:
    """The number of MPI ranks (1 when not launched by MPI)."""
    return _first_int(_SIZE_VARIABLES, 1)


def serves_grpc() -> bool:
    """Only rank 0 serves gRPC; the others only take part in the engine's collective steps."""
    return mpi_rank() == 0


def run_worker_rank(config: GeneratorConfig) -> None:
    """A non-zero rank of a tensor-parallel engine dir: load the shard, step with rank 0, exit with it."""
    if config.engine != "trtllm-engine":
        raise RuntimeError(f"rank {mpi_rank()}: engine {config.engine!r} does not run under plain mpirun; "
                           "launch the trtllm engine with `mpirun -n N trtllm-llmapi-launch splitserve ...`")
    from splitserve.generator.engines.trtllm_inflight import load_runner, runner_executor

    runner = load_runner(config, mpi_rank())
    log.info("rank %d of %d: serving as a tensor-parallel worker", mpi_rank(), mpi_world_size())
    # A worker's shutdown joins its execution loop, which ends when rank 0 shuts its Executor down.
    runner_executor(runner).shutdown()


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return default
