"""Starts both tiers as child processes on free loopback ports, so the bench can watch their PIDs."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from splitserve.local_stack import free_port, stop_processes, wait_serving

READY_TIMEOUT_S = 900.0  # a large model on a GPU loads for minutes


@dataclass(frozen=True)
class StackProcesses:
    """The running tiers: public address and PIDs."""

    address: str
    tokenizer_pid: int
    generator_pid: int


def _spawn(tier: str, model: str, extra: list[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "splitserve", tier, "--model", model, "--log-level", "WARNING", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def started_stack(model: str, generator_args: list[str], tokenizer_args: list[str]) -> Iterator[StackProcesses]:
    """Generator and tokenizer tiers with extra flags; SIGTERM then SIGKILL on exit."""
    generator_address, address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    generator = _spawn("generator", model, ["--address", generator_address, *generator_args])
    tokenizer = _spawn("tokenizer", model, ["--address", address, "--generator", generator_address, *tokenizer_args])
    processes = [generator, tokenizer]
    try:
        wait_serving(address, processes, READY_TIMEOUT_S)
        yield StackProcesses(address, tokenizer.pid, generator.pid)
    finally:
        stop_processes([tokenizer, generator], timeout=20)
