"""gRPC server plumbing both tiers share: health, reflection, binding, graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitserve.common.decoding import StrictDecodingInterceptor
from splitserve.common.rpc_handlers import StreamClosingInterceptor

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Streams between tiers carry many small messages; keepalive catches dead peers within seconds.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


@dataclass
class HealthReporter:
    """Sets the grpc.health.v1 status of the server ("") and of each named service together."""

    servicer: Any  # grpc_health.v1.health.aio.HealthServicer (the package ships no type hints)
    service_names: Sequence[str]
    draining: bool = False  # once draining, nothing reports SERVING again

    async def set(self, serving: bool) -> None:
        status = SERVING if serving and not self.draining else NOT_SERVING
        for name in ("", *self.service_names):
            await self.servicer.set(name, status)


@dataclass
class BoundServer:
    """A started-or-not aio server, the port it is bound to, and its health reporter."""

    server: grpc.aio.Server
    port: int
    health: HealthReporter

    async def drain(self, grace_seconds: float) -> None:
        """NOT_SERVING, then stop: calls in flight get `grace_seconds` to finish, new ones are refused."""
        self.health.draining = True
        await self.health.set(False)
        await self.server.stop(grace_seconds)


def server_options(max_receive_message_bytes: int, max_concurrent_streams: int) -> list[tuple[str, int]]:
    """Channel args for the configured limits; max_concurrent_streams 0 keeps gRPC's default (no limit)."""
    # gRPC takes the first value of a repeated key, so the default is dropped rather than shadowed
    options = [o for o in SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_receive_message_bytes))
    if max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    return options


async def create_server(address: str, service_names: Sequence[str],
                        interceptors: Sequence[grpc.aio.ServerInterceptor] = (), *,
                        credentials: grpc.ServerCredentials | None = None,
                        options: Sequence[tuple[str, int]] = SERVER_OPTIONS) -> BoundServer:
    """Creates a server with health (NOT_SERVING) and reflection; the caller adds its servicers.

    With `credentials` the port speaks TLS; undecodable requests end with INVALID_ARGUMENT.
    """
    # Outermost first: streaming responses are closed in their own task (see StreamClosingInterceptor).
    server = grpc.aio.server(interceptors=[StreamClosingInterceptor(), *interceptors, StrictDecodingInterceptor()],
                             options=list(options))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    reporter = HealthReporter(health_servicer, service_names)
    await reporter.set(False)  # the health servicer starts as SERVING for "": not until we are warm
    return BoundServer(server, port, reporter)


async def wait_for_stop_signal() -> None:
    """Returns on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def wait_for_termination(bound: BoundServer, grace_seconds: float) -> None:
    """Serves until SIGTERM/SIGINT, then reports NOT_SERVING and stops with a grace period."""
    await wait_for_stop_signal()
    log.info("stopping: NOT_SERVING, finishing in-flight calls within %.1fs", grace_seconds)
    await bound.drain(grace_seconds)
