"""The engine process: runs one engine on its own event loop, fed and drained through a pipe.

All output produced in one turn of this loop leaves as a single `Outputs` message, so the cost of
the pipe is per engine step, not per token. The process ignores SIGINT (a terminal's Ctrl-C reaches
the whole process group, and the parent drains before it stops the engine) and exits when the
parent's end of the pipe closes, however the parent ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from splitserve.common.errors import InvalidRequest, RequestError
from splitserve.common.request_log import configure_logging
from splitserve.generator.config import GeneratorConfig, apply_process_settings
from splitserve.generator.engine import DirectStreams, Engine, create_engine
from splitserve.generator.engine_messages import Cancel, Health, Outputs, Ready, Shutdown, Start, StartFailed, ToEngine
from splitserve.link.errors import error_from_status
from splitserve.link.multiplex import Output, ServingEnd

log = logging.getLogger(__name__)


def main(config: GeneratorConfig, conn: Connection, log_level: str) -> None:
    """Entry point of the child process (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent drains first
    configure_logging(log_level)
    apply_process_settings(config)
    asyncio.run(_serve(config, conn))


async def _serve(config: GeneratorConfig, conn: Connection) -> None:
    worker = _Worker(conn, asyncio.get_running_loop())
    engine = create_engine(config, worker.health)
    try:
        await engine.start()
    except Exception as error:
        log.exception("engine failed to start")
        conn.send(StartFailed(f"{type(error).__name__}: {error}"))
        await engine.stop()
        return
    worker.engine = engine
    conn.send(Ready(engine.info))
    try:
        await worker.serve()
    finally:
        await worker.abort_all()
        await engine.stop()


class _Worker:
    """Starts and cancels the parent's streams on the engine; sends their outputs once per loop turn."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.engine: Engine | None = None
        self._conn = conn
        self._loop = loop
        self._inbound: asyncio.Queue[ToEngine | None] = asyncio.Queue()
        self._streams = ServingEnd(self._schedule_flush)
        self._direct: dict[int, Callable[[], None]] = {}  # stream id -> abort, for engines with DirectStreams
        self._flush_scheduled = False

    def health(self, serving: bool) -> None:
        self._conn.send(Health(serving))

    async def serve(self) -> None:
        """Handles the parent's messages until it asks to shut down or goes away."""
        threading.Thread(target=self._receive, name="engine-pipe-reader", daemon=True).start()
        while (message := await self._inbound.get()) is not None and not isinstance(message, Shutdown):
            if isinstance(message, Start):
                self._start(message)
            elif isinstance(message, Cancel):
                self._cancel(message.stream_id)

    async def abort_all(self) -> None:
        for abort in self._direct.values():
            abort()
        self._direct.clear()
        await self._streams.cancel_all()

    def _start(self, start: Start) -> None:
        if not isinstance(self.engine, DirectStreams):
            self._streams.start(start.stream_id, functools.partial(self._run, start))
            return
        if start.stream_id in self._direct:
            self._streams.emit(start.stream_id, InvalidRequest(f"stream_id {start.stream_id} is in use"))
            return
        try:
            abort = self.engine.open_stream(start.request, functools.partial(self._deliver, start.stream_id))
        except RequestError as error:
            self._streams.emit(start.stream_id, error)
            return
        self._direct[start.stream_id] = abort

    def _deliver(self, stream_id: int, output: Output) -> None:
        """A direct stream's output, on this loop: into the one outbox (its last one ends the stream)."""
        if isinstance(output, RequestError) or output.finish_reason is not None:
            self._direct.pop(stream_id, None)
        self._streams.emit(stream_id, output)

    def _cancel(self, stream_id: int) -> None:
        if (abort := self._direct.pop(stream_id, None)) is not None:
            abort()
        else:
            self._streams.cancel(stream_id)

    def _receive(self) -> None:
        """Blocking reads on a thread (the GIL is free while it waits); EOF means the parent is gone."""
        try:
            while True:
                message = self._conn.recv()
                self._loop.call_soon_threadsafe(self._inbound.put_nowait, message)
        except (EOFError, OSError):
            self._loop.call_soon_threadsafe(self._inbound.put_nowait, None)

    async def _run(self, start: Start) -> None:
        assert self.engine is not None
        await self._streams.pump(start.stream_id, self.engine.generate(start.request))

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:  # after every ready callback of this loop turn has run
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        assert self.engine is not None
        self._flush_scheduled = False
        if not self._streams.has_outputs:
            return  # only a stream's end woke us
        items = [(stream_id, _plain(item)) for stream_id, item in self._streams.take()]
        with contextlib.suppress(OSError):  # the parent is gone; the reader thread ends the loop
            self._conn.send(Outputs(items, self.engine.load()))


def _plain(item: Output) -> Output:
    """An error as one of the link's own classes, so that any engine's error unpickles in the parent."""
    return error_from_status(item.code_name, item.message) if isinstance(item, RequestError) else item
