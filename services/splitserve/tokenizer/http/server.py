"""Serves the HTTP API with uvicorn inside the tier's own event loop, beside the grpc.aio server.

uvicorn's signal handlers are left out: the tier's SIGTERM handling drains both servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class _InLoopServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(address: str) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), so the port is known before serving."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # Nagle's algorithm holds each streamed event until the client's delayed ACK (40 ms) comes back.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """The running HTTP API: its port, and `drain` to stop it (calls in flight get the grace period)."""

    def __init__(self, app: Any, address: str, grace_seconds: float, tls: tuple[str, str] | None = None) -> None:
        self._socket = bind(address)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, http="httptools",
                                loop="none", timeout_graceful_shutdown=math.ceil(grace_seconds), server_header=False,
                                ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)
        self._server = _InLoopServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve([self._socket]), name="http-api")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)

    async def drain(self, grace_seconds: float) -> None:
        """Stops accepting, lets requests in flight finish within the grace period, then closes."""
        if self._task is None:
            return
        force = grace_seconds <= 0  # no grace: close at once, without waiting for requests
        self._server.config.timeout_graceful_shutdown = None if force else math.ceil(grace_seconds)
        self._server.force_exit = force
        self._server.should_exit = True
        await self._task
        self._task = None
