"""Starts both tiers as child processes on free loopback ports, so the bench can watch their PIDs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from splitserve.local_stack import free_port, stop_processes, wait_serving

READY_TIMEOUT_S = 900.0  # a large model on a GPU loads for minutes


@dataclass(frozen=True)
class StackProcesses:
    """The running tiers: public addresses (one per tokenizer process) and PIDs."""

    addresses: list[str]
    tokenizer_pids: list[int]
    generator_pid: int
    http_addresses: list[str]  # each tokenizer's OpenAI-compatible API (empty: not served)

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def tokenizer_pid(self) -> int:
        return self.tokenizer_pids[0]


def _spawn(tier: str, model: str, extra: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    # Metrics are served on a free port: several processes of a tier share this host.
    command = [sys.executable, "-m", "splitserve", tier, "--model", model, "--log-level", "WARNING",
               "--metrics-port", "0", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, env=None if env is None else {**os.environ, **env})


@contextlib.contextmanager
def started_stack(model: str, generator_args: list[str], tokenizer_args: list[str],
                  tokenizers: int = 1, http: bool = False,
                  env: dict[str, str] | None = None) -> Iterator[StackProcesses]:
    """One generator and `tokenizers` tokenizer processes (each its own port, all on that generator).

    Several tokenizer processes are how the tier scales out (pods in a cluster); the bench spreads
    requests over them as a load balancer would. With `http`, each also serves the OpenAI-compatible API on
    a port of its own. `env` is added to both tiers' environment. SIGTERM then SIGKILL on exit.
    """
    generator_address = f"127.0.0.1:{free_port()}"
    generator = _spawn("generator", model, ["--address", generator_address, *generator_args], env)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(tokenizers)]
    http_addresses = [f"127.0.0.1:{free_port()}" for _ in range(tokenizers)] if http else []
    front = [_spawn("tokenizer", model, ["--address", a, "--generator", generator_address, *tokenizer_args,
                                         *(["--http-address", http_addresses[i]] if http else [])], env)
             for i, a in enumerate(addresses)]
    try:
        for address in addresses:
            wait_serving(address, [generator, *front], READY_TIMEOUT_S)
        yield StackProcesses(addresses, [t.pid for t in front], generator.pid, http_addresses)
    finally:
        stop_processes([*front, generator], timeout=20)
