"""Many token streams over one connection: the machine both transports share (GenerateMany, the engine pipe).

The calling end numbers its streams, keeps an inbox per stream that its one reader fills, and fails
every open stream when the connection ends. The serving end runs each stream as a task, cancels it by
number, and gathers every stream's outputs in one outbox that its transport sends as one message: the
busier the link, the more outputs share a message. Transports only carry the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any

from splitserve.common.errors import DeadlineExceeded, InvalidRequest, RequestError
from splitserve.link.types import GenerationChunk

log = logging.getLogger(__name__)

Output = GenerationChunk | RequestError  # a stream's next chunk, or the error that ended it
Send = Callable[[int], Awaitable[None]]  # sends the start or the cancel of one stream id


class Inbox:
    """Outputs received for one stream and not yet consumed."""

    __slots__ = ("_chunks", "_error", "_ready")

    def __init__(self) -> None:
        self._chunks: list[GenerationChunk] = []
        self._error: RequestError | None = None
        self._ready = asyncio.Event()

    def put(self, output: Output) -> None:
        if isinstance(output, RequestError):
            self._error = output
        else:
            self._chunks.append(output)
        self._ready.set()

    async def take(self) -> GenerationChunk:
        """Everything waiting, as one chunk (raises the error that ended the stream, if any)."""
        await self._ready.wait()
        self._ready.clear()
        if self._error is not None:
            raise self._error
        chunks, self._chunks = self._chunks, []
        return chunks[0] if len(chunks) == 1 else merge(chunks)


def merge(chunks: list[GenerationChunk]) -> GenerationChunk:
    """Consecutive chunks of one stream as one; the last one's finish fields are kept."""
    tokens = [token for chunk in chunks for token in chunk.tokens]
    last = chunks[-1]
    return dataclasses.replace(last, tokens=tokens) if last.finish_reason is not None else GenerationChunk(tokens)


class CallingEnd:
    """The side that opens streams: ids, an inbox each, routing by id, fail-all when the connection ends."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._inboxes: dict[int, Inbox] = {}

    def inbox(self, stream_id: int) -> Inbox | None:
        """The open stream's inbox, for the reader (None: the stream has ended; drop its outputs)."""
        return self._inboxes.get(stream_id)

    def fail_all(self, error: RequestError) -> None:
        """The connection ended: every open stream ends with `error`."""
        for inbox in self._inboxes.values():
            inbox.put(error)

    @property
    def open_streams(self) -> int:
        return len(self._inboxes)

    async def stream(self, start: Send, cancel: Send) -> AsyncGenerator[GenerationChunk, None]:
        """Opens a stream with `start(id)` and yields its chunks; closing it early sends `cancel(id)`."""
        stream_id, inbox = next(self._ids), Inbox()
        self._inboxes[stream_id] = inbox
        started = finished = False
        try:
            await start(stream_id)
            started = True
            while not finished:
                chunk = await inbox.take()
                finished = chunk.finish_reason is not None
                yield chunk
        except RequestError:
            finished = True  # the serving end ended the stream itself
            raise
        finally:
            del self._inboxes[stream_id]
            if started and not finished:
                with contextlib.suppress(RequestError, asyncio.CancelledError):
                    await asyncio.shield(cancel(stream_id))


class ServingEnd:
    """The side that runs streams: a task each, cancel by id, one outbox; `wake` is called when it fills."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._outbox: list[tuple[int, Output]] = []
        self._tasks: dict[int, asyncio.Task[None]] = {}

    @property
    def running(self) -> int:
        return len(self._tasks)

    @property
    def has_outputs(self) -> bool:
        return bool(self._outbox)

    def take(self) -> list[tuple[int, Output]]:
        """Every output since the last take, in order, for one message."""
        outputs, self._outbox = self._outbox, []
        return outputs

    def start(self, stream_id: int, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs `run()` as the stream's task (it emits through `pump`); a stream id in use is refused."""
        if stream_id in self._tasks:
            self.emit(stream_id, InvalidRequest(f"stream_id {stream_id} is in use"))
            return
        task = asyncio.get_running_loop().create_task(run())
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._ended(stream_id))

    def cancel(self, stream_id: int) -> None:
        if (task := self._tasks.get(stream_id)) is not None:
            task.cancel()

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def emit(self, stream_id: int, output: Output) -> None:
        self._outbox.append((stream_id, output))
        self._wake()

    async def pump(self, stream_id: int, chunks: AsyncGenerator[GenerationChunk, None],
                   timeout_s: float | None = None) -> str:
        """Emits the stream's chunks, or the error that ends it; returns the stream's status code name."""
        try:
            async with asyncio.timeout(timeout_s):
                async with contextlib.aclosing(chunks) as stream:
                    async for chunk in stream:
                        self.emit(stream_id, chunk)
            return "OK"
        except TimeoutError:
            return self._fail(stream_id, DeadlineExceeded("deadline exceeded in the generator"))
        except RequestError as error:
            return self._fail(stream_id, error)
        except asyncio.CancelledError:
            return "CANCELLED"  # by the caller (or the connection ended): nobody waits for an output
        except Exception as error:  # one stream's failure must not end the others
            log.exception("a stream failed")
            return self._fail(stream_id, RequestError(f"internal error: {error}"))

    def _fail(self, stream_id: int, error: RequestError) -> str:
        self.emit(stream_id, error)
        return error.code_name

    def _ended(self, stream_id: int) -> None:
        self._tasks.pop(stream_id, None)
        self._wake()  # a transport may be waiting only for the last stream to end
