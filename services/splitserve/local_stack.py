"""Both tiers as child processes on loopback: `splitserve up` and `splitserve demo`."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve.terminal import stream_to_terminal

READY_TIMEOUT_S = 600.0


def _spawn(tier: str, model_path: str, model_name: str, extra: list[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "splitserve", tier, "--model", model_path, "--model-name", model_name,
               "--log-level", "WARNING", *extra]
    return subprocess.Popen(command)


def wait_serving(address: str, processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Polls grpc.health.v1 until SERVING; fails early if a tier exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not become SERVING within {timeout:.0f}s")


@contextlib.contextmanager
def local_stack(args: argparse.Namespace, model_path: str, model_name: str) -> Iterator[None]:
    """Starts generator then tokenizer; stops both (SIGTERM, then SIGKILL) on exit."""
    generator = _spawn("generator", model_path, model_name,
                       ["--address", args.generator_address, "--engine", args.engine])
    tokenizer = _spawn("tokenizer", model_path, model_name,
                       ["--address", args.address, "--generator", args.generator_address])
    processes = [generator, tokenizer]
    try:
        wait_serving(args.address, processes, READY_TIMEOUT_S)
        yield
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def run_up(args: argparse.Namespace, model_path: str, model_name: str) -> int:
    with local_stack(args, model_path, model_name):
        print(f"splitserve is up: public API on {args.address}, generator on {args.generator_address} "
              f"({model_name}). Ctrl-C stops both.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


def run_demo(args: argparse.Namespace, model_path: str, model_name: str) -> int:
    with local_stack(args, model_path, model_name):
        print(f"splitserve is up ({model_name}); streaming a greedy generation:", file=sys.stderr, flush=True)
        return stream_to_terminal(args)
