"""Observability over both tiers with the real model: one trace per request, metrics, request logs."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.request_log import REQUEST_LOGGER

from .conftest import Stack

PROMPT = "The capital of France is"
TEXT_METHOD = "/splitserve.api.text.v1.TextGenerationService/GenerateStream"
TOKENS_METHOD = "/splitserve.api.tokens.v1.TokenGenerationService/Generate"
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01"


def greedy(max_new_tokens: int, **fields: Any) -> pb.GenerateStreamRequest:
    return pb.GenerateStreamRequest(
        prompt=PROMPT, sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new_tokens), options=pb.ResponseOptions(include_tokens=True),
        **fields)


async def stream(stack: Stack, request: pb.GenerateStreamRequest,
                 metadata: Sequence[tuple[str, str]] = ()) -> tuple[list[pb.GenerateStreamResponse], dict[str, str]]:
    """The responses and the trailing metadata of one streamed call."""
    call = stack.text.GenerateStream(request, metadata=tuple(metadata))
    parts = [part async for part in call]
    return parts, {k: str(v) for k, v in await call.trailing_metadata()}


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Servers finish their spans and metrics just after the last message reaches the client."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for telemetry"
        await asyncio.sleep(0.02)


# -- tracing ------------------------------------------------------------------------------------------


def service(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def one(spans: Sequence[ReadableSpan], name: str, tier: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name and service(s) == f"splitserve-{tier}"]
    assert len(found) == 1, f"expected one {name} span of the {tier}, got {[(s.name, service(s)) for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan | None:
    parent = span.parent
    return next((s for s in spans if parent is not None and s.context.span_id == parent.span_id), None)


def is_ancestor(ancestor: ReadableSpan, span: ReadableSpan, spans: Sequence[ReadableSpan]) -> bool:
    node: ReadableSpan | None = span
    while node is not None:
        if node.context.span_id == ancestor.context.span_id:
            return True
        node = parent_of(node, spans)
    return False


def all_text(span: ReadableSpan) -> str:
    values = [*span.attributes.values(), *(v for e in span.events for v in (e.attributes or {}).values())]
    return " ".join(map(str, values))


async def test_one_trace_follows_a_streamed_request_across_both_tiers(stack: Stack) -> None:
    stack.spans.clear()
    parts, metadata = await stream(stack, greedy(8, request_id="trace-me"), [("traceparent", TRACEPARENT)])
    await eventually(lambda: len(stack.spans.get_finished_spans()) >= 7)
    await asyncio.sleep(0.1)  # nothing more may come: no span per token
    spans = stack.spans.get_finished_spans()

    assert sorted((s.name, service(s)) for s in spans) == sorted([
        (TEXT_METHOD, "splitserve-tokenizer"), ("tokenize", "splitserve-tokenizer"),
        (TOKENS_METHOD, "splitserve-tokenizer"), ("detokenize", "splitserve-tokenizer"),
        (TOKENS_METHOD, "splitserve-generator"), ("queue_wait", "splitserve-generator"),
        ("decode", "splitserve-generator")])
    assert {s.context.trace_id for s in spans} == {int(CLIENT_TRACE_ID, 16)}  # the client's trace, continued
    assert metadata["x-trace-id"] == CLIENT_TRACE_ID

    public, gen_server = one(spans, TEXT_METHOD, "tokenizer"), one(spans, TOKENS_METHOD, "generator")
    client = one(spans, TOKENS_METHOD, "tokenizer")
    assert public.kind == SpanKind.SERVER and gen_server.kind == SpanKind.SERVER and client.kind == SpanKind.CLIENT
    assert parent_of(gen_server, spans) is client and parent_of(client, spans) is public
    assert is_ancestor(public, gen_server, spans)
    for name, tier, parent in (("tokenize", "tokenizer", public), ("detokenize", "tokenizer", public),
                               ("queue_wait", "generator", gen_server), ("decode", "generator", gen_server)):
        assert parent_of(one(spans, name, tier), spans) is parent
    assert one(spans, "queue_wait", "generator").end_time <= one(spans, "decode", "generator").start_time

    completion = parts[-1].usage.completion_tokens
    for server, tier in ((public, "tokenizer"), (gen_server, "generator")):
        attrs = server.attributes
        assert attrs["splitserve.request_id"] == "trace-me"
        assert attrs["gen_ai.request.model"] == "SmolLM2-135M-Instruct" and attrs["splitserve.engine"] == "native"
        assert attrs["gen_ai.usage.input_tokens"] == 5 and attrs["gen_ai.usage.output_tokens"] == completion == 8
        assert attrs["gen_ai.response.finish_reasons"] == ("length",)
        assert attrs["rpc.grpc.status_code"] == 0 and attrs["splitserve.grpc_status"] == "OK"
        [first_token] = [e for e in server.events if e.name == "first_token"]
        ttft = (first_token.attributes or {})["splitserve.time_to_first_token_s"]
        assert isinstance(ttft, float) and 0 < ttft < (server.end_time - server.start_time) / 1e9, tier

    output = "".join(p.text for p in parts)
    for span in spans:
        assert PROMPT not in all_text(span) and output.strip() not in all_text(span), span.name


async def test_a_new_trace_starts_without_traceparent_and_its_id_is_returned(stack: Stack) -> None:
    stack.spans.clear()
    _, metadata = await stream(stack, greedy(2))
    await eventually(lambda: any(s.name == TEXT_METHOD for s in stack.spans.get_finished_spans()))
    public = one(stack.spans.get_finished_spans(), TEXT_METHOD, "tokenizer")
    assert metadata["x-trace-id"] == format(public.context.trace_id, "032x") != CLIENT_TRACE_ID
    assert public.parent is None


async def test_a_refused_request_is_traced_with_its_status(stack: Stack) -> None:
    stack.spans.clear()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream(stack, greedy(2, model="no-such-model"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(refused.value.trailing_metadata() or ())["x-trace-id"]
    await eventually(lambda: any(s.name == TEXT_METHOD for s in stack.spans.get_finished_spans()))
    public = one(stack.spans.get_finished_spans(), TEXT_METHOD, "tokenizer")
    assert public.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert public.attributes["splitserve.grpc_status"] == "NOT_FOUND"


# -- metrics ------------------------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        page = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def metric_ports(stack: Stack) -> dict[str, int]:
    ports = {}
    for tier, telemetry in (("tokenizer", stack.tokenizer.telemetry), ("generator", stack.generator.telemetry)):
        assert telemetry.metrics_server is not None
        ports[tier] = telemetry.metrics_server.port
    return ports


def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_both_metrics_endpoints_count_a_streamed_request(stack: Stack) -> None:
    ports = metric_ports(stack)
    before = {tier: scrape(port) for tier, port in ports.items()}
    parts, _ = await stream(stack, greedy(8))
    first_tokens = len(next(p for p in parts if p.tokens).tokens)
    after: dict[str, dict[Any, float]] = {}

    def settled() -> bool:
        after.update({tier: scrape(port) for tier, port in ports.items()})
        return all(moved(before[t], after[t], "splitserve_requests_total") == 1 for t in ports)

    await eventually(settled)
    for tier in ports:
        b, a = before[tier], after[tier]
        assert moved(b, a, "splitserve_prompt_tokens_total") == 5, tier
        assert moved(b, a, "splitserve_completion_tokens_total") == 8, tier
        assert moved(b, a, "splitserve_time_to_first_token_seconds_count") == 1, tier
        assert moved(b, a, "splitserve_time_to_first_token_seconds_sum") > 0, tier
        assert moved(b, a, "splitserve_inter_token_latency_seconds_count") == 8 - first_tokens, tier
        assert moved(b, a, "splitserve_request_duration_seconds_count") == 1, tier
        assert moved(b, a, "splitserve_request_duration_seconds_bucket", le="+Inf") == 1, tier
        assert a[("splitserve_requests_queued", ())] == 0 and a[("splitserve_requests_running", ())] == 0, tier


async def test_errors_are_counted_by_grpc_code_on_the_tier_that_saw_them(stack: Stack) -> None:
    ports = metric_ports(stack)
    before = {tier: scrape(port) for tier, port in ports.items()}
    for request in (greedy(2, model="no-such-model"), greedy(100_000)):
        with pytest.raises(grpc.aio.AioRpcError):
            await stream(stack, request)
    after: dict[str, dict[Any, float]] = {}

    def settled() -> bool:
        after.update({tier: scrape(port) for tier, port in ports.items()})
        return moved(before["generator"], after["generator"], "splitserve_request_errors_total",
                     code="INVALID_ARGUMENT") == 1

    await eventually(settled)
    tok, gen = (before["tokenizer"], after["tokenizer"]), (before["generator"], after["generator"])
    assert moved(*tok, "splitserve_request_errors_total", code="NOT_FOUND") == 1
    assert moved(*tok, "splitserve_request_errors_total", code="INVALID_ARGUMENT") == 1
    assert moved(*gen, "splitserve_request_errors_total", code="NOT_FOUND") == 0  # never reached the generator
    assert moved(*tok, "splitserve_requests_total") == 0 == moved(*gen, "splitserve_requests_total")


# -- logs ---------------------------------------------------------------------------------------------


async def test_each_finished_request_logs_one_line_per_tier(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.spans.clear()
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        parts, metadata = await stream(stack, greedy(4, request_id="log-me"))
        await eventually(lambda: len([r for r in caplog.records if r.name == REQUEST_LOGGER]) >= 2)
    lines = [r.fields for r in caplog.records if r.name == REQUEST_LOGGER]  # type: ignore[attr-defined]
    assert sorted(line["tier"] for line in lines) == ["generator", "tokenizer"]
    for line in lines:
        assert line["request_id"] == "log-me" and line["trace_id"] == metadata["x-trace-id"]
        assert (line["prompt_tokens"], line["completion_tokens"], line["finish_reason"]) == (5, 4, "length")
        assert line["status"] == "OK" and line["latency_ms"] > 0
        assert PROMPT not in str(line) and parts[0].text not in str(line)


class _UnaryRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Records the methods of the unary calls it sees (grpc.aio files an interceptor under one kind only)."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(_method_name(details.method))
        return await continuation(details, request)


class _StreamRecorder(grpc.aio.StreamStreamClientInterceptor):
    """Records the methods of the bidirectional calls it sees."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.methods.append(_method_name(details.method))
        return await continuation(details, requests)


def _method_name(method: str | bytes) -> str:
    return (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]


async def test_multiplexed_stream_goes_around_client_interceptors(stack: Stack) -> None:
    """GenerateMany traces each request itself. On a channel with interceptors, grpc.aio would pass
    each of its writes and reads through a queue and a task of its own, at a cost to every request."""
    from splitserve.link.types import GenerationRequest
    from splitserve.tokenizer.generator_client import GeneratorClient

    methods: list[str] = []
    client = GeneratorClient(stack.generator_address, [_UnaryRecorder(methods), _StreamRecorder(methods)])
    try:
        await client.model_info(timeout=5)
        chunks = [c async for c in client.generate(GenerationRequest("r", [1, 2, 3], max_new_tokens=2), 10)]
    finally:
        await client.close()
    assert chunks[-1].finish_reason is not None
    assert methods == ["GetModelInfo"]
