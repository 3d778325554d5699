"""The client side of GenerateMany: many requests share one stream to a generator.

One reader task demultiplexes the stream's batched deltas into per-request inboxes. A request's
consumer takes everything its inbox holds at once, so when the tokenizer tier is busy, several
deltas become one text message to the client: the busier the tier, the cheaper each token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.common.errors import DeadlineExceeded, EngineUnavailable, RequestError, error_for_code
from splitserve.common.request_telemetry import SERVER_FAULTS
from splitserve.generator.multiplex import RPC_ATTRIBUTES, SPAN_NAME
from splitserve.generator.pb_convert import chunk_from_pb, request_to_pb
from splitserve.link.types import GenerationChunk, GenerationRequest

_STATUS_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class _Inbox:
    """Deltas received for one request and not yet consumed."""

    def __init__(self) -> None:
        self.deltas: list[pb.RequestDelta] = []
        self.ready = asyncio.Event()

    def put(self, delta: pb.RequestDelta) -> None:
        self.deltas.append(delta)
        self.ready.set()

    async def take(self) -> list[pb.RequestDelta]:
        await self.ready.wait()
        self.ready.clear()
        deltas, self.deltas = self.deltas, []
        return deltas


class MultiplexedClient:
    """Requests over one GenerateMany call, reopened after the generator goes away."""

    def __init__(self, stub: Any, tracer: trace.Tracer, min_interval_s: float = 0.0) -> None:
        self._stub = stub
        self._tracer = tracer
        # At most one delta per request per interval: fewer, larger messages at the cost of burstier streams.
        self._min_interval_s = min_interval_s
        # The generator holds tokens for the same interval (one that predates the field sends each
        # step's): fewer deltas on this stream as well as fewer messages to the client.
        self._hold_ms = round(min_interval_s * 1000)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._inboxes: dict[int, _Inbox] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write in flight per call

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        """Streams chunks; closing this iterator cancels the request in the generator."""
        stream_id, inbox = next(self._ids), _Inbox()
        # Not made current: this generator is suspended between chunks, and the caller's code runs then.
        # The outcome is recorded from the status code: closing this generator after its last chunk
        # raises GeneratorExit in it, which is no error and is too costly to record on every request.
        with self._tracer.start_span(SPAN_NAME, kind=trace.SpanKind.CLIENT, attributes=RPC_ATTRIBUTES,
                                     record_exception=False, set_status_on_exception=False) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            self._inboxes[stream_id] = inbox
            finished, code = False, "CANCELLED"
            start = request_to_pb(request)
            start.min_message_interval_ms = self._hold_ms
            try:
                await self._write(pb.GenerateManyRequest(stream_id=stream_id, start=start,
                                                         trace_context=carrier, timeout_seconds=timeout or 0.0))
                async with asyncio.timeout(timeout):
                    while not finished:
                        chunk = _merge(await inbox.take())
                        finished = chunk.finish_reason is not None
                        yield chunk
                        if self._min_interval_s and not finished:
                            await asyncio.sleep(self._min_interval_s)  # let tokens gather in the inbox
                code = "OK"
            except TimeoutError as error:
                code = "DEADLINE_EXCEEDED"
                raise DeadlineExceeded("deadline exceeded waiting for the generator") from error
            except RequestError as error:
                code = error.code_name
                raise
            finally:
                self._inboxes.pop(stream_id, None)
                if not finished:
                    await self._cancel(stream_id)
                span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])
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
        with contextlib.suppress(RequestError, asyncio.CancelledError):
            await asyncio.shield(self._write(pb.GenerateManyRequest(stream_id=stream_id,
                                                                    cancel=pb.CancelGeneration())))

    def _open(self) -> None:
        self._call = self._stub.GenerateMany()
        self._reader = asyncio.create_task(self._read(self._call), name="generate-many-reader")

    async def _read(self, call: Any) -> None:
        """Routes each delta to its request; when the stream ends, fails every request still on it."""
        reason = "the generator closed the stream"
        try:
            while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                for delta in message.deltas:
                    inbox = self._inboxes.get(delta.stream_id)
                    if inbox is not None:
                        inbox.put(delta)
        except grpc.aio.AioRpcError as error:
            reason = f"{error.code().name}: {error.details()}"
        finally:
            if self._call is call:
                self._call = None
            failure = pb.RequestDelta(error=pb.RequestError(code=grpc.StatusCode.UNAVAILABLE.value[0],
                                                            message=f"generator tier: {reason}"))
            for inbox in self._inboxes.values():
                inbox.put(failure)


def _merge(deltas: list[pb.RequestDelta]) -> GenerationChunk:
    """One chunk from every delta a request has waiting (raises the error that ended it, if any)."""
    tokens = []
    for delta in deltas:
        if delta.HasField("error"):
            raise error_for_code(_STATUS_NAMES.get(delta.error.code, "UNKNOWN"), delta.error.message)
        chunk = chunk_from_pb(delta.response)
        tokens.extend(chunk.tokens)
        if chunk.finish_reason is not None:
            return dataclasses.replace(chunk, tokens=tokens)
    return GenerationChunk(tokens)
