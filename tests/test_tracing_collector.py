"""End to end: both tiers as processes export to a real OTLP collector (rotel, from PyPI).

rotel receives OTLP (the generator sends over gRPC, the tokenizer over HTTP) and forwards it over OTLP
to a receiver in this test, built on opentelemetry-proto's collector service, which records what came.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.local_stack import free_port

rotel = pytest.importorskip("rotel")

READY_S = 300.0


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps (service name, span name, trace id) of every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: grpc.aio.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend((attrs.get("service.name", ""), s.name, s.trace_id.hex()) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()



@contextlib.asynccontextmanager
async def process(*args: str, ready: str = "") -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Starts a process and, with `ready`, waits for a stdout line matching it; SIGTERM on exit."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    line = ""
    try:
        while ready and not re.search(ready, line):
            assert proc.stdout is not None
            raw = await asyncio.wait_for(proc.stdout.readline(), READY_S)
            assert raw, f"{args[:4]} exited with {await proc.wait()} before it was ready"
            line = raw.decode()
        yield proc, line
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()


def tier(name: str, model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "splitserve", name, "--model", str(model), "--log-level", "WARNING",
            "--metrics-port", "0", *args]


@pytest.mark.slow
async def test_spans_of_both_tiers_reach_a_real_collector_under_one_trace(model_dir: Path) -> None:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    receiver_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    grpc_in, http_in = free_port(), free_port()
    collector = [str(Path(rotel.__file__).parent / "rotel-agent"), "start",
                 "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_in}", "--otlp-http-endpoint", f"127.0.0.1:{http_in}",
                 "--exporter", "otlp", "--otlp-exporter-endpoint", f"http://127.0.0.1:{receiver_port}",
                 "--otlp-exporter-protocol", "grpc", "--batch-timeout", "100ms"]
    generator_cmd = tier("generator", model_dir, "--address", "127.0.0.1:0",
                         "--otlp-endpoint", f"http://127.0.0.1:{grpc_in}", "--otlp-protocol", "grpc")
    try:
        async with process(*collector), process(*generator_cmd, ready=r"generator ready on \S+:\d+") as (_, line):
            generator_address = line.split()[-1]
            tokenizer_cmd = tier("tokenizer", model_dir, "--address", "127.0.0.1:0", "--generator", generator_address,
                                 "--otlp-endpoint", f"http://127.0.0.1:{http_in}", "--otlp-protocol", "http/protobuf")
            async with process(*tokenizer_cmd, ready=r"tokenizer ready on \S+:\d+") as (_, line), \
                    grpc.aio.insecure_channel(line.split()[-1]) as channel:
                call = text_pb2_grpc.TextGenerationServiceStub(channel).GenerateStream(pb.GenerateStreamRequest(
                    prompt="The capital of France is", stopping=pb.StoppingCriteria(max_new_tokens=4)))
                assert "".join([part.text async for part in call]).startswith(" Paris")
                trace_id = dict(await call.trailing_metadata())["x-trace-id"]
            # both tiers have stopped (and flushed their spans); give the collector time to forward them
            for _ in range(100):
                services = {s for s, _, t in receiver.spans if t == trace_id}
                if services == {"splitserve-tokenizer", "splitserve-generator"}:
                    break
                await asyncio.sleep(0.1)
    finally:
        await server.stop(0)
    names = {(s, n) for s, n, t in receiver.spans if t == trace_id}
    assert {("splitserve-tokenizer", "tokenize"), ("splitserve-tokenizer", "detokenize"),
            ("splitserve-generator", "queue_wait"), ("splitserve-generator", "decode")} <= names, receiver.spans
    assert {s for s, _ in names} == {"splitserve-tokenizer", "splitserve-generator"}
