"""One thread that drains the TensorRT-LLM Executor's responses and routes them to asyncio queues.

`await_responses()` without an id returns responses of every request, so exactly one thread may
call it; each response goes to its request's queue by `request_id`. Waiting on a single finished
id without a timeout would block forever, so the thread always waits with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from splitserve.common.errors import EngineUnavailable

log = logging.getLogger(__name__)

POLL_TIMEOUT = timedelta(milliseconds=50)  # how quickly stop() is noticed; responses wake it at once


class ResponsePoller:
    """Routes Executor responses by request id into per-request asyncio queues."""

    def __init__(self, executor: Any, loop: asyncio.AbstractEventLoop,
                 on_failure: Callable[[BaseException], None]) -> None:
        self._executor = executor
        self._loop = loop
        self._on_failure = on_failure
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trtllm-response-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def registering(self) -> Iterator[Callable[[int, asyncio.Queue[Any]], None]]:
        """Hold this while enqueueing and registering, so no early response finds its queue missing."""
        with self._lock:
            yield self._queues.__setitem__

    def unregister(self, request_id: int) -> None:
        with self._lock:
            self._queues.pop(request_id, None)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                responses = self._executor.await_responses(timeout=POLL_TIMEOUT)
                self._dispatch(responses)
        except BaseException as error:  # the executor died: fail everyone rather than hang them
            if self._stopping.is_set():
                return
            log.exception("TensorRT-LLM executor failed")
            self._fail_all(EngineUnavailable(f"engine failed ({error}); request aborted, retry"))
            self._loop.call_soon_threadsafe(self._on_failure, error)

    def _dispatch(self, responses: list[Any]) -> None:
        with self._lock:
            for response in responses:
                queue = self._queues.get(response.request_id)
                if queue is not None:  # responses of cancelled requests have no reader
                    self._loop.call_soon_threadsafe(queue.put_nowait, response)

    def fail_all(self, error: Exception) -> None:
        """Ends every registered stream with `error` (shutdown)."""
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            for queue in self._queues.values():
                self._loop.call_soon_threadsafe(queue.put_nowait, error)
