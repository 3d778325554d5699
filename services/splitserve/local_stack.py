"""Both tiers as child processes on loopback, one or many of each: `splitserve up` and `splitserve demo`."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve.terminal import stream_to_terminal

READY_TIMEOUT_S = 600.0


Process = subprocess.Popen[bytes]


def free_port() -> int:
    """A loopback TCP port free right now (for tiers started on ports chosen here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(tier: str, model_path: str, model_name: str, extra: list[str]) -> Process:
    command = [sys.executable, "-m", "splitserve", tier, "--model", model_path, "--model-name", model_name,
               "--log-level", "WARNING", *extra]
    return subprocess.Popen(command)


class TierExited(RuntimeError):
    """A tier process exited before the stack was up."""

    def __init__(self, process: Process) -> None:
        super().__init__(f"{process.args!r} exited with {process.returncode}")
        self.process = process


def wait_serving(address: str, processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Polls grpc.health.v1 until SERVING; fails early if a tier exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise TierExited(process)
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not become SERVING within {timeout:.0f}s")


PORT_STRIDE = 10  # replica i of a tier listens on its base port + 10·i, and its metrics port likewise
METRICS_PORTS = {"tokenizer": 9464, "generator": 9465}


@dataclass(frozen=True)
class StackPlan:
    """Where each local process listens: gRPC addresses and metrics ports, per tier."""

    tokenizers: list[str]
    generators: list[str]
    tokenizer_metrics: list[int]
    generator_metrics: list[int]
    tokenizer_http: list[str] = field(default_factory=list)  # each tokenizer's OpenAI-compatible API (none: off)

    @classmethod
    def strided(cls, address: str, generator_address: str, tokenizers: int = 1, generators: int = 1,
                http_address: str | None = None) -> StackPlan:
        """N tokenizers from `address` (and `http_address`) up and M generators from `generator_address` up,
        10 ports apart."""
        return cls(_strided(address, tokenizers), _strided(generator_address, generators),
                   [METRICS_PORTS["tokenizer"] + PORT_STRIDE * i for i in range(tokenizers)],
                   [METRICS_PORTS["generator"] + PORT_STRIDE * i for i in range(generators)],
                   _strided(http_address, tokenizers) if http_address else [])


def _strided(address: str, count: int) -> list[str]:
    host, port = address.rsplit(":", 1)
    return [f"{host}:{int(port) + PORT_STRIDE * i}" for i in range(count)]


def spawn_stack(plan: StackPlan, model_path: str, model_name: str, engine: str, generator_args: Sequence[str] = (),
                tokenizer_args: Sequence[str] = ()) -> tuple[list[Process], list[Process]]:
    """Starts every generator, then every tokenizer pointed at all of them (as one static pool); the args are
    appended to each process's own flags (a repeated flag: the last one wins)."""
    generators = [spawn_generator(address, port, model_path, model_name, ["--engine", engine, *generator_args])
                  for address, port in zip(plan.generators, plan.generator_metrics, strict=True)]
    pool = ",".join(plan.generators)
    tokenizers = [_spawn("tokenizer", model_path, model_name,
                         ["--address", address, "--generator", pool, "--metrics-port", str(port),
                          *(["--http-address", plan.tokenizer_http[i]] if plan.tokenizer_http else []),
                          *tokenizer_args])
                  for i, (address, port) in enumerate(zip(plan.tokenizers, plan.tokenizer_metrics, strict=True))]
    return generators, tokenizers


def spawn_generator(address: str, metrics_port: int, model_path: str, model_name: str,
                    args: Sequence[str] = ()) -> Process:
    """One generator process (also how a test brings a killed one back)."""
    return _spawn("generator", model_path, model_name, ["--address", address, "--metrics-port", str(metrics_port),
                                                        *args])


def stop_processes(processes: Sequence[Process], timeout: float = 15.0) -> None:
    """SIGTERM to all (tokenizers drain first when listed first), then SIGKILL whatever has not exited."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def local_stack(args: argparse.Namespace, model_path: str,
                model_name: str) -> Iterator[tuple[StackPlan, list[Process]]]:
    """Starts the generators then the tokenizers; stops them all (SIGTERM, then SIGKILL) on exit."""
    http = getattr(args, "http_address", None)
    plan = StackPlan.strided(args.address, args.generator_address, getattr(args, "tokenizers", 1),
                             getattr(args, "generators", 1), None if http in (None, "", "off") else http)
    generators, tokenizers = spawn_stack(plan, model_path, model_name, args.engine,
                                         getattr(args, "generator_args", []), getattr(args, "tokenizer_args", []))
    processes = [*tokenizers, *generators]
    try:
        for address in plan.tokenizers:
            wait_serving(address, processes, READY_TIMEOUT_S)
        yield plan, processes
    finally:
        stop_processes(processes)


UP_POLL_S = 0.5  # how soon `up` notices a tier that exited


def run_up(args: argparse.Namespace, model_path: str, model_name: str) -> int:
    """Serves until Ctrl-C or SIGTERM (exit 0), or until a tier exits: then it stops the others and exits 1."""
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    try:
        with local_stack(args, model_path, model_name) as (plan, processes):
            # Blocked only now: children inherit the mask, and theirs must let SIGTERM through.
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # sigtimedwait only sees blocked signals
            http = f", OpenAI-compatible HTTP on {', '.join(plan.tokenizer_http)}" if plan.tokenizer_http else ""
            print(f"splitserve is up ({model_name}): public API on {', '.join(plan.tokenizers)}{http}, "
                  f"generators on {', '.join(plan.generators)}. Ctrl-C stops them all.", flush=True)
            while signal.sigtimedwait(stop_signals, UP_POLL_S) is None:
                if (dead := exited(processes)) is not None:
                    return _tier_died(dead)
    except TierExited as error:  # during start-up: the same end, with the same message
        return _tier_died(error.process)
    return 0


def _tier_died(dead: Process) -> int:
    print(f"splitserve up: {_tier_of(dead)} (pid {dead.pid}) exited with {dead.returncode}; stopping the others",
          file=sys.stderr, flush=True)
    return 1


def exited(processes: Sequence[Process]) -> Process | None:
    """The first process that has exited (and is reaped, so no defunct child is left), if any."""
    return next((p for p in processes if p.poll() is not None), None)


def _tier_of(process: Process) -> str:
    args = list(process.args) if isinstance(process.args, list) else [str(process.args)]
    return "the generator" if "generator" in args else "the tokenizer" if "tokenizer" in args else str(args)


def run_demo(args: argparse.Namespace, model_path: str, model_name: str) -> int:
    with local_stack(args, model_path, model_name):
        print(f"splitserve is up ({model_name}); streaming a greedy generation:", file=sys.stderr, flush=True)
        return stream_to_terminal(args)
