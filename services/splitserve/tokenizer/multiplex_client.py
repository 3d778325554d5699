"""The client side of GenerateMany: many requests share one stream to a generator.

One reader task routes the stream's batched deltas into the link's per-request inboxes. A request's
consumer takes everything its inbox holds at once, so when the tokenizer tier is busy, several
deltas become one text message to the client: the busier the tier, the cheaper each token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.common.errors import DeadlineExceeded, EngineUnavailable, ReplicaUnavailable, RequestError
from splitserve.common.request_telemetry import SERVER_FAULTS
from splitserve.link.convert import GENERATOR_TIER, delta_from_pb, request_to_pb
from splitserve.link.errors import code_number
from splitserve.link.multiplex import CallingEnd
from splitserve.link.spans import RPC_ATTRIBUTES, SPAN_NAME
from splitserve.link.types import GenerationChunk, GenerationRequest

_CANCEL = pb.CancelGeneration()


class MultiplexedClient:
    """Requests over one GenerateMany call, reopened after the generator goes away."""

    def __init__(self, stub: Any, tracer: trace.Tracer) -> None:
        self._stub = stub
        self._tracer = tracer
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._streams = CallingEnd()
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write in flight per call

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        """Streams chunks; closing this iterator cancels the request in the generator."""
        # Not made current: this generator is suspended between chunks, and the caller's code runs then.
        # The outcome is recorded from the status code: closing this generator after its last chunk
        # raises GeneratorExit in it, which is no error and is too costly to record on every request.
        with self._tracer.start_span(SPAN_NAME, kind=trace.SpanKind.CLIENT, attributes=RPC_ATTRIBUTES,
                                     record_exception=False, set_status_on_exception=False) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            start = request_to_pb(request)

            async def send_start(stream_id: int) -> None:
                await self._write(pb.GenerateManyRequest(stream_id=stream_id, start=start, trace_context=carrier,
                                                         timeout_seconds=timeout or 0.0))

            code = "CANCELLED"
            try:
                async with asyncio.timeout(timeout):
                    async for chunk in self._streams.stream(send_start, self._cancel):
                        yield chunk
                code = "OK"
            except TimeoutError as error:
                code = "DEADLINE_EXCEEDED"
                raise DeadlineExceeded("deadline exceeded waiting for the generator") from error
            except RequestError as error:
                code = error.code_name
                raise
            finally:
                span.set_attribute("rpc.grpc.status_code", code_number(code))
                if code in SERVER_FAULTS:
                    span.set_status(Status(StatusCode.ERROR, code))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._call is not None:
            self._call.cancel()

    async def _write(self, message: pb.GenerateManyRequest) -> None:
        async with self._write_lock:
            if self._call is None or self._call.done():
                self._open()
            try:
                await self._call.write(message)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
                raise EngineUnavailable(f"generator stream broke: {error}") from None

    async def _cancel(self, stream_id: int) -> None:
        if self._call is not None and not self._call.done():  # a new call would not know the stream
            await self._write(pb.GenerateManyRequest(stream_id=stream_id, cancel=_CANCEL))

    def _open(self) -> None:
        self._call = self._stub.GenerateMany()
        self._reader = asyncio.create_task(self._read(self._call), name="generate-many-reader")

    async def _read(self, call: Any) -> None:
        """Routes each delta to its request; when the stream ends, fails every request still on it."""
        reason = "the generator closed the stream"
        inbox = self._streams.inbox
        try:
            while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                for delta in message.deltas:
                    if (box := inbox(delta.stream_id)) is not None:
                        box.put(delta_from_pb(delta))
        except grpc.aio.AioRpcError as error:
            reason = f"{error.code().name}: {error.details()}"
        finally:
            if self._call is call:
                self._call = None
            self._streams.fail_all(ReplicaUnavailable(f"{GENERATOR_TIER}: {reason}"))
