"""The bench's hop table: spans exported over real OTLP/HTTP into its sink, and the medians built from them."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from splitserve.bench.hops import GENERATOR, GENERATOR_SPAN, TEXT_METHODS, TOKENIZER, format_hops, hop_table
from splitserve.bench.span_sink import SpanRecord, SpanSink

MS = 1_000_000


def _tracer(service: str, endpoint: str) -> tuple[TracerProvider, trace.Tracer]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    return provider, provider.get_tracer("test")


def test_the_sink_keeps_what_the_real_exporter_sends() -> None:
    with SpanSink() as sink:
        provider, tracer = _tracer(TOKENIZER, sink.endpoint)
        span = tracer.start_span(TEXT_METHODS[0], start_time=10 * MS)
        span.add_event("first_token", timestamp=15 * MS)
        span.add_event("first_token", timestamp=99 * MS)  # only the first of a name counts
        span.end(end_time=20 * MS)
        provider.shutdown()
        [record] = sink.take()
        assert sink.take() == []
    assert record.service == TOKENIZER and record.name == TEXT_METHODS[0]
    assert (record.start_ns, record.end_ns, record.events) == (10 * MS, 20 * MS, {"first_token": 15 * MS})
    assert record.trace_id == format(span.get_span_context().trace_id, "032x")


def _request(trace_id: str, offset_ms: int) -> list[SpanRecord]:
    t = offset_ms * MS
    return [SpanRecord(trace_id, TOKENIZER, TEXT_METHODS[0], t, t + 50 * MS, {"first_token": t + 12 * MS}),
            SpanRecord(trace_id, TOKENIZER, "tokenize", t + MS // 2, t + 1 * MS),
            SpanRecord(trace_id, GENERATOR, GENERATOR_SPAN, t + 2 * MS, t + 49 * MS, {"first_token": t + 11 * MS})]


def test_hops_are_medians_over_complete_traces() -> None:
    spans = [*_request("a", 0), *_request("b", 100), *_request("c", 200)[:2]]  # c lacks its generator span
    table = hop_table(spans, client_ttft_p50_ms=14.5)
    assert table["requests"] == 2
    assert table["median_ms"] == {"tokenized": 1.0, "to_generator": 1.0, "engine": 9.0, "to_tokenizer": 1.0,
                                  "tokenizer_ttft": 12.0}
    assert table["client_to_tokenizer_and_back_ms"] == 2.5
    assert "engine's first token" in format_hops(table)


def test_no_traces_says_so() -> None:
    assert hop_table([], 1.0) == {"requests": 0}
    assert "no complete traces" in format_hops({"requests": 0})
