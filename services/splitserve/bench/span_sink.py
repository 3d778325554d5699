"""A minimal OTLP/HTTP trace receiver on loopback: the tiers the bench starts export their spans here.

It keeps only what the hop table needs (trace, service, name, start, end, event times); it is a
measuring tool for `splitserve bench --hops`, not a collector.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, times in wall-clock nanoseconds (every process of the bench shares the clock)."""

    trace_id: str
    service: str
    name: str
    start_ns: int
    end_ns: int
    events: dict[str, int] = field(default_factory=dict)  # first time of each event name


def records_of(request: ExportTraceServiceRequest) -> list[SpanRecord]:
    """The spans of one OTLP export request."""
    out = []
    for resource_spans in request.resource_spans:
        service = next((a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                       "")
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                events: dict[str, int] = {}
                for event in span.events:
                    events.setdefault(event.name, event.time_unix_nano)
                out.append(SpanRecord(span.trace_id.hex(), service, span.name, span.start_time_unix_nano,
                                      span.end_time_unix_nano, events))
    return out


class SpanSink:
    """Serves POST /v1/traces on 127.0.0.1 (a free port) on a thread; `take()` hands over what arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[SpanRecord] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                sink.add(records_of(request))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="span-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def take(self) -> list[SpanRecord]:
        with self._lock:
            spans, self._spans = self._spans, []
        return spans

    def __enter__(self) -> SpanSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
