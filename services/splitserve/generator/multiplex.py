"""Serves one GenerateMany stream: many requests, their deltas batched into each outgoing message.

Each started request runs as its own stream of the link's serving end, exactly like a Generate call
(same validation, tracing and metrics). The writer sends everything in the outbox as one message
whenever gRPC is ready for the next one, so the busier the link, the more deltas share a message and
the less each token costs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.common.request_telemetry import RequestTracker
from splitserve.generator.engine import Engine
from splitserve.generator.tracked import run_tracked
from splitserve.link.convert import outputs_to_pb, request_from_pb
from splitserve.link.errors import code_number
from splitserve.link.multiplex import ServingEnd
from splitserve.link.spans import RPC_ATTRIBUTES, SPAN_NAME
from splitserve.link.types import GenerationChunk, GenerationRequest


class MultiplexedStream:
    """The server side of one GenerateMany call."""

    def __init__(self, engine: Engine, tracker: RequestTracker, check_ready: Callable[[], None]) -> None:
        self._engine = engine
        self._tracker = tracker
        self._check_ready = check_ready
        self._wake = asyncio.Event()
        self._streams = ServingEnd(self._wake.set)
        self._reading = True

    async def serve(self, requests: AsyncIterator[pb.GenerateManyRequest]) -> AsyncIterator[pb.GenerateManyResponse]:
        """Yields batched deltas until the client has closed its side and every request has ended."""
        reader = asyncio.create_task(self._read(requests))
        streams = self._streams
        try:
            while self._reading or streams.running or streams.has_outputs:
                await self._wake.wait()
                self._wake.clear()
                if streams.has_outputs:
                    yield outputs_to_pb(streams.take())
        finally:  # the call ended (client gone or cancelled): abort everything still running
            reader.cancel()
            await self._streams.cancel_all()

    async def _read(self, requests: AsyncIterator[pb.GenerateManyRequest]) -> None:
        try:
            async for message in requests:
                if message.WhichOneof("action") == "start":
                    self._start(message)
                else:
                    self._streams.cancel(message.stream_id)
        finally:
            self._reading = False
            self._wake.set()

    def _start(self, message: pb.GenerateManyRequest) -> None:
        request, timeout = request_from_pb(message.start), message.timeout_seconds or None
        parent = propagate.extract(dict(message.trace_context))
        self._streams.start(message.stream_id, lambda: self._run(message.stream_id, request, timeout, parent))

    async def _run(self, stream_id: int, request: GenerationRequest, timeout: float | None,
                   parent: Context) -> None:
        """One request, traced as if it were its own Generate call (the span the interceptor would make)."""
        tracer = self._tracker.telemetry.tracer
        with tracer.start_as_current_span(SPAN_NAME, parent, trace.SpanKind.SERVER, RPC_ATTRIBUTES) as span:
            code = await self._streams.pump(stream_id, self._generate(request), timeout)
            span.set_attribute("rpc.grpc.status_code", code_number(code))

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        with self._tracker.track(request.request_id) as tracked:
            self._check_ready()
            async with contextlib.aclosing(run_tracked(self._engine, tracked, request)) as chunks:
                async for chunk in chunks:
                    yield chunk
