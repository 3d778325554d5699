"""Per-request tracing, metrics and the request log line, shared by both tiers' servicers.

The RPC's server span comes from the gRPC interceptor; this adds the request's attributes to it, the
phase spans below it (tokenize, queue wait, decode, detokenize), the first-token event, and the
metrics. There is never a span per token: a phase span is opened once and closed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sized
from typing import Protocol, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from splitserve.common.errors import RequestError
from splitserve.common.request_log import log_request
from splitserve.common.telemetry import Telemetry

TRACE_ID_METADATA = "x-trace-id"
# gRPC codes that are the server's fault mark the span as an error; the caller's mistakes do not.
SERVER_FAULTS = {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"}


class _Chunk(Protocol):
    """A streamed message carrying some newly generated tokens."""

    @property
    def tokens(self) -> Sized: ...


ChunkT = TypeVar("ChunkT", bound=_Chunk)


def trace_id_of(span: Span) -> str:
    """The W3C hex trace id, or "" when there is no trace."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class TrackedRequest:
    """One RPC being observed: timings, token counts, outcome."""

    def __init__(self, tracker: RequestTracker, request_id: str, api: str = "grpc") -> None:
        self._tracker = tracker
        self.api = api  # which public API served it: "grpc" or "http" (the OpenAI-compatible one)
        self._metrics = tracker.telemetry.metrics
        self.request_id = request_id
        self.span = trace.get_current_span()  # the interceptor's server span (non-recording when off)
        self.trace_id = trace_id_of(self.span)
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = ""
        self.code = "OK"
        self._output: list[str] | None = [] if tracker.telemetry.settings.trace_content else None
        self.span.set_attributes({"splitserve.request_id": request_id, "gen_ai.request.model": tracker.model})
        self._metrics.queued.inc()

    @property
    def records_content(self) -> bool:
        return self._output is not None

    def record_prompt(self, text: str) -> None:
        """Puts the prompt text on the span, only when the operator turned on --trace-content."""
        if self._output is not None:
            self.span.set_attribute("splitserve.prompt", text)

    def record_output(self, text: str) -> None:
        """Collects output text for the span, only when the operator turned on --trace-content."""
        if self._output is not None:
            self._output.append(text)

    def set_trace_id(self, context: grpc.aio.ServicerContext) -> None:
        """Puts the trace id in the call's trailing metadata, so a caller can find the trace.

        Trailers, not headers: grpc.aio sends custom initial metadata as an operation of its own,
        which cost each request 0.1-0.2 ms of CPU and 0.27 ms before its first token; trailers go
        with the status, of a failed call too.
        """
        if self.trace_id:
            context.set_trailing_metadata(((TRACE_ID_METADATA, self.trace_id),))

    def set_engine(self, engine: str) -> None:
        self.span.set_attribute("splitserve.engine", engine)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Span]:
        """A child span that is current while the block runs (the block must not yield to the caller)."""
        with self._tracker.telemetry.tracer.start_as_current_span(name) as span:
            yield span

    def _child(self, name: str) -> Span:
        return self._tracker.telemetry.tracer.start_span(name, trace.set_span_in_context(self.span))

    async def observe(self, stream: AsyncIterator[ChunkT], waiting: str | None,
                      streaming: str) -> AsyncGenerator[ChunkT, None]:
        """Passes chunks through, timing tokens; spans `waiting` until the first token, `streaming` after it.

        Closing this generator closes `stream` too (that is what aborts the request upstream).
        """
        phase = self._child(waiting) if waiting else None
        try:
            async for chunk in stream:
                if chunk.tokens:
                    if self.first_token_at is None:
                        if phase is not None:
                            phase.end()
                        phase = self._child(streaming)
                    self.on_tokens(len(chunk.tokens))
                yield chunk
        finally:
            if phase is not None:
                phase.end()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def on_tokens(self, count: int) -> None:
        """Records a message of `count` new tokens: the first gives TTFT, later ones inter-token latency."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
            ttft = now - self.started
            self._metrics.time_to_first_token.observe(ttft)
            self._metrics.queued.dec()
            self._metrics.running.inc()
            self.span.add_event("first_token", {"splitserve.time_to_first_token_s": ttft})
            self.span.set_attribute("splitserve.time_to_first_token_s", ttft)
        else:
            gap = (now - self.last_token_at) / count
            for _ in range(count):
                self._metrics.inter_token_latency.observe(gap)
        self.last_token_at = now

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Records how the stream ended and its usage."""
        self.finish_reason, self.prompt_tokens, self.completion_tokens = reason, prompt_tokens, completion_tokens

    def _close(self, code: str) -> None:
        self.code = code
        latency = time.perf_counter() - self.started
        m = self._metrics
        (m.running if self.first_token_at is not None else m.queued).dec()
        m.request_duration.observe(latency)
        if code == "OK":
            m.requests.inc()
            m.prompt_tokens.inc(self.prompt_tokens)
            m.completion_tokens.inc(self.completion_tokens)
        else:
            m.errors.labels(code).inc()
        self._annotate_span(code)
        log_request({"request_id": self.request_id, "trace_id": self.trace_id, "tier": self._tracker.tier,
                     "api": self.api,
                     "status": code, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                     "completion_tokens": self.completion_tokens, "latency_ms": round(latency * 1000, 3),
                     "ttft_ms": round((self.first_token_at - self.started) * 1000, 3) if self.first_token_at else None})

    def _annotate_span(self, code: str) -> None:
        if not self.span.is_recording():  # tracing off, or the caller cancelled and the span has ended
            return
        self.span.set_attributes({"gen_ai.usage.input_tokens": self.prompt_tokens,
                                  "gen_ai.usage.output_tokens": self.completion_tokens,
                                  "splitserve.grpc_status": code})
        if self._output is not None:
            self.span.set_attribute("splitserve.completion", "".join(self._output))
        if self.finish_reason:
            self.span.set_attribute("gen_ai.response.finish_reasons", (self.finish_reason,))
        if code in SERVER_FAULTS:
            self.span.set_status(Status(StatusCode.ERROR, code))


class RequestTracker:
    """Opens a TrackedRequest per generation RPC of one tier."""

    def __init__(self, telemetry: Telemetry, tier: str, model: str) -> None:
        self.telemetry = telemetry
        self.tier = tier
        self.model = model

    @contextlib.contextmanager
    def track(self, request_id: str, api: str = "grpc") -> Iterator[TrackedRequest]:
        """Observes the block: a RequestError's code, a cancellation or a crash ends the request's record."""
        tracked = TrackedRequest(self, request_id, api)
        code = "UNKNOWN"
        try:
            yield tracked
            code = "OK"
        except RequestError as error:
            code = error.code_name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        finally:
            tracked._close(code)
