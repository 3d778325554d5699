"""Serves one GenerateMany stream: many requests, their deltas batched into each outgoing message.

Each started request runs as its own task over the engine, exactly like a Generate call (same
validation, tracing and metrics); its deltas go to a shared outbox. The writer sends everything in
the outbox as one message whenever gRPC is ready for the next one, so the busier the link, the more
deltas share a message and the less each token costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry import propagate, trace

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.common.errors import RequestError
from splitserve.common.request_telemetry import RequestTracker
from splitserve.generator.engine import Engine
from splitserve.generator.pb_convert import chunk_to_delta
from splitserve.generator.tracked import run_tracked

log = logging.getLogger(__name__)

SPAN_NAME = "/splitserve.api.tokens.v1.TokenGenerationService/Generate"
RPC_ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": "splitserve.api.tokens.v1.TokenGenerationService",
                  "rpc.method": "Generate"}


class MultiplexedStream:
    """The server side of one GenerateMany call."""

    def __init__(self, engine: Engine, tracker: RequestTracker, check_ready: Callable[[], None]) -> None:
        self._engine = engine
        self._tracker = tracker
        self._check_ready = check_ready
        self._outbox: list[pb.RequestDelta] = []
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._reading = True

    async def serve(self, requests: AsyncIterator[pb.GenerateManyRequest]) -> AsyncIterator[pb.GenerateManyResponse]:
        """Yields batched deltas until the client has closed its side and every request has ended."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while self._reading or self._tasks or self._outbox:
                await self._wake.wait()
                self._wake.clear()
                if self._outbox:
                    batch, self._outbox = self._outbox, []
                    yield pb.GenerateManyResponse(deltas=batch)
        finally:  # the call ended (client gone or cancelled): abort everything still running
            reader.cancel()
            for task in list(self._tasks.values()):
                task.cancel()

    async def _read(self, requests: AsyncIterator[pb.GenerateManyRequest]) -> None:
        try:
            async for message in requests:
                if message.WhichOneof("action") == "start":
                    self._start(message)
                elif (task := self._tasks.get(message.stream_id)) is not None:
                    task.cancel()
        finally:
            self._reading = False
            self._wake.set()

    def _start(self, message: pb.GenerateManyRequest) -> None:
        if message.stream_id in self._tasks:
            self._emit_error(message.stream_id, "INVALID_ARGUMENT", f"stream_id {message.stream_id} is in use")
            return
        task = asyncio.create_task(self._run(message))
        self._tasks[message.stream_id] = task
        task.add_done_callback(lambda _: self._ended(message.stream_id))

    def _ended(self, stream_id: int) -> None:
        self._tasks.pop(stream_id, None)
        self._wake.set()  # the writer may be waiting only for the last request to end

    async def _run(self, message: pb.GenerateManyRequest) -> None:
        """One request, traced as if it were its own Generate call (the span the interceptor would make)."""
        parent = propagate.extract(dict(message.trace_context))
        tracer = self._tracker.telemetry.tracer
        with tracer.start_as_current_span(SPAN_NAME, parent, trace.SpanKind.SERVER, RPC_ATTRIBUTES) as span:
            code = "OK"
            try:
                async with asyncio.timeout(message.timeout_seconds or None):
                    await self._generate(message.stream_id, message.start)
            except TimeoutError:
                code = self._emit_error(message.stream_id, "DEADLINE_EXCEEDED", "deadline exceeded in the generator")
            except RequestError as error:
                code = self._emit_error(message.stream_id, error.code_name, error.message)
            except asyncio.CancelledError:
                code = "CANCELLED"  # by the client (or the stream ended): nobody is waiting for a delta
            except Exception as error:  # one request's failure must not end the others' stream
                log.exception("request %s failed", message.start.request_id)
                code = self._emit_error(message.stream_id, "INTERNAL", f"generator error: {error}")
            span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])

    async def _generate(self, stream_id: int, start: pb.GenerateRequest) -> None:
        with self._tracker.track(start.request_id or "anonymous") as tracked:
            self._check_ready()
            async with contextlib.aclosing(run_tracked(self._engine, tracked, start)) as chunks:
                async for chunk in chunks:
                    self._emit(chunk_to_delta(stream_id, chunk))

    def _emit(self, delta: pb.RequestDelta) -> None:
        self._outbox.append(delta)
        self._wake.set()

    def _emit_error(self, stream_id: int, code_name: str, message: str) -> str:
        code = getattr(grpc.StatusCode, code_name).value[0]
        self._emit(pb.RequestDelta(stream_id=stream_id, error=pb.RequestError(code=code, message=message)))
        return code_name
