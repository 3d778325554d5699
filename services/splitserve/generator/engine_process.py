"""An engine run in a child process, so that the gRPC event loop and the engine loop share no GIL.

In one process, transformers' generation loop thread and the asyncio loop serving gRPC take turns
holding the GIL: every token streamed costs the engine loop time, and the engine step slows as the
number of streams grows. Here the engine runs in `engine_worker` (spawned, so CUDA starts clean),
and this side is an `Engine` like any other: requests go down a pipe, and each message that comes
back carries every stream's new tokens of one engine step.

If the child dies, its streams end with UNAVAILABLE, health turns NOT_SERVING, and a new child is
started (with the model loaded again) until one starts or the engine is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from splitserve.common.errors import EngineUnavailable
from splitserve.generator import engine_worker
from splitserve.generator.engine import HealthListener
from splitserve.generator.engine_messages import (
    Cancel,
    FromEngine,
    Health,
    Outputs,
    Ready,
    Shutdown,
    Start,
    StartFailed,
    ToEngine,
)
from splitserve.link.multiplex import CallingEnd
from splitserve.link.types import EngineInfo, EngineLoad, GenerationChunk, GenerationRequest

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_TIMEOUT_S = 30.0


class _Child:
    """One engine process, the parent's end of its pipe, and the thread reading that end."""

    def __init__(self, config: GeneratorConfig, deliver: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe(duplex=True)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.process = ctx.Process(target=engine_worker.main, args=(config, child_conn, level),
                                   name="splitserve-engine", daemon=True)
        self.process.start()
        child_conn.close()  # only the child holds its end: EOF here when it dies
        self.reader = threading.Thread(target=self._read, args=(deliver,), name="engine-pipe-reader", daemon=True)
        self.reader.start()

    def _read(self, deliver: Any) -> None:
        try:
            while True:
                deliver(self, self.conn.recv())
        except (EOFError, OSError):
            deliver(self, None)

    def send(self, message: ToEngine) -> None:
        try:
            self.conn.send(message)
        except OSError as error:
            raise EngineUnavailable(f"engine process is gone: {error}") from None

    def stop(self) -> None:
        """Asks the child to stop, then makes sure it does (blocking: run it on a thread)."""
        with contextlib.suppress(EngineUnavailable):
            self.send(Shutdown())
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class EngineProcess:
    """An `Engine` whose real engine (`config.engine`) runs in a child process."""

    def __init__(self, config: GeneratorConfig, on_health: HealthListener) -> None:
        self._config = replace(config, engine_process=False)  # the child runs the engine itself
        self._on_health = on_health
        self._loop: asyncio.AbstractEventLoop | None = None
        self._child: _Child | None = None
        self._started: asyncio.Future[EngineInfo] | None = None
        self._info: EngineInfo | None = None
        self._load = EngineLoad(0, 0, 0.0, config.max_batch_size)
        self._streams = CallingEnd()
        self._stopping = False
        self._restart: asyncio.Task[None] | None = None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineUnavailable("engine not started")
        return self._info

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._info = await self._spawn()

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if self._child is None or self._started is None or not self._started.done():
            raise EngineUnavailable("the engine process is (re)starting; retry shortly")
        return self._stream(self._child, request)

    def _stream(self, child: _Child, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        async def start(stream_id: int) -> None:
            child.send(Start(stream_id, request))

        async def cancel(stream_id: int) -> None:
            child.send(Cancel(stream_id))

        return self._streams.stream(start, cancel)

    def load(self) -> EngineLoad:
        return self._load

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        child, self._child = self._child, None
        if child is not None:
            await asyncio.to_thread(child.stop)
        self._fail_streams("generator is shutting down")

    # -- the child ------------------------------------------------------------------------------------

    async def _spawn(self) -> EngineInfo:
        assert self._loop is not None
        self._started = self._loop.create_future()
        self._child = _Child(self._config, self._deliver)
        try:
            return await self._started
        except BaseException:
            child, self._child = self._child, None
            if child is not None:
                await asyncio.to_thread(child.stop)
            raise

    def _deliver(self, child: _Child, message: FromEngine | None) -> None:
        """Called on the reader thread: hands the message to the event loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._on_message, child, message)

    def _on_message(self, child: _Child, message: FromEngine | None) -> None:
        if child is not self._child:
            return  # a stopped child's last words
        if isinstance(message, Outputs):
            self._load = message.load
            for stream_id, item in message.items:
                if (inbox := self._streams.inbox(stream_id)) is not None:
                    inbox.put(item)
        elif isinstance(message, Health):
            self._on_health(message.serving)
        elif isinstance(message, Ready):
            self._resolve(message.info, None)
        elif isinstance(message, StartFailed):
            self._resolve(None, RuntimeError(f"engine process failed to start: {message.reason}"))
        else:  # None: the pipe closed, so the child has exited
            self._child_exited()

    def _resolve(self, info: EngineInfo | None, error: Exception | None) -> None:
        if self._started is not None and not self._started.done():
            if error is not None:
                self._started.set_exception(error)
            else:
                self._started.set_result(info)  # type: ignore[arg-type]

    def _child_exited(self) -> None:
        code = self._child.process.exitcode if self._child is not None else None
        assert self._started is not None  # a child exists only after _spawn
        if not self._started.done():  # it died while starting: _spawn raises this
            self._resolve(None, RuntimeError(f"engine process exited while starting (exit code {code})"))
            return
        if self._stopping or self._started.exception() is not None:  # stopping, or a start failure already told
            return
        log.error("engine process exited (exit code %s); restarting it", code)
        old, self._child = self._child, None  # new requests are refused until a new child is ready
        self._fail_streams(f"engine process exited (exit code {code})")
        self._on_health(False)
        assert self._loop is not None
        self._restart = self._loop.create_task(self._respawn(old), name="engine-process-restart")

    async def _respawn(self, old: _Child | None) -> None:
        if old is not None:
            await asyncio.to_thread(old.stop)
        for delay in itertools.chain(RESTART_BACKOFF_S, itertools.repeat(RESTART_BACKOFF_S[-1])):
            try:
                self._info = await self._spawn()
            except Exception as error:
                log.error("engine process restart failed: %s; next try in %.0fs", error, delay)
                await asyncio.sleep(delay)
                continue
            log.info("engine process restarted")
            self._on_health(True)
            return

    def _fail_streams(self, reason: str) -> None:
        self._streams.fail_all(EngineUnavailable(reason))

