"""Tracing and metrics set-up of one tier: settings from OTEL_* variables and flags, built at the entry point.

Nothing here reads the environment on import: `settings_from_args` takes the environment as an argument
and the entry point passes `os.environ` once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from splitserve.common.metrics import MetricsServer, TierMetrics

PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = ("always_on", "always_off", "traceidratio",
            "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio")
LOG_FORMATS = ("text", "json")
# Distinct defaults so both tiers on one host (`splitserve up`) each get an endpoint.
DEFAULT_METRICS_PORTS = {"tokenizer": 9464, "generator": 9465}
TRACER_NAME = "splitserve"
# The multiplexed generation RPC (see generator/multiplex.py); its requests are traced one by one.
MULTIPLEXED = "GenerateMany"


@dataclass(frozen=True)
class TelemetrySettings:
    """How one tier traces, exports and serves metrics."""

    service_name: str
    tracing: bool = True  # False: no SDK, no interceptors, no trace ids (OTEL_SDK_DISABLED=true)
    otlp_endpoint: str | None = None  # None: spans are created (ids in logs and metadata) but not exported
    otlp_protocol: str = "grpc"
    sampler: str = "parentbased_always_on"
    sampler_ratio: float = 1.0
    trace_content: bool = False  # prompt and output text in spans: only when an operator opts in
    metrics_port: int | None = None  # None: no endpoint; 0: any free port (tests)


def add_arguments(parser: argparse.ArgumentParser, default_metrics_port: int) -> None:
    """Adds the tracing, metrics and log flags; each overrides its OTEL_* variable."""
    group = parser.add_argument_group("observability")
    group.add_argument("--otel-service-name", default=None, help="service.name (else OTEL_SERVICE_NAME)")
    group.add_argument("--otlp-endpoint", default=None,
                       help="OTLP collector, e.g. http://localhost:4317 (else OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT;"
                            " unset: spans are not exported)")
    group.add_argument("--otlp-protocol", default=None, choices=[*PROTOCOLS, "http"],
                       help="else OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL, default grpc")
    group.add_argument("--otel-sampler", default=None, choices=SAMPLERS,
                       help="else OTEL_TRACES_SAMPLER, default parentbased_always_on")
    group.add_argument("--otel-sampler-arg", type=float, default=None,
                       help="ratio for *traceidratio (else OTEL_TRACES_SAMPLER_ARG)")
    group.add_argument("--no-tracing", action="store_true", help="turn tracing off (as OTEL_SDK_DISABLED=true)")
    group.add_argument("--trace-content", action="store_true",
                       help="record prompt and output text in spans (off: never)")
    group.add_argument("--metrics-port", type=int, default=default_metrics_port,
                       help="Prometheus endpoint port on the gRPC address's host; 0 disables it")
    group.add_argument("--log-format", default="text", choices=LOG_FORMATS)


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v), None)


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str],
                       default_service_name: str) -> TelemetrySettings:
    """Flags first, then the standard OTEL_* variables, then defaults."""
    traces_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    endpoint = _first(args.otlp_endpoint, traces_endpoint, environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip() == "none" and not args.otlp_endpoint:
        endpoint = None
    protocol = _first(args.otlp_protocol, environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
                      environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")) or "grpc"
    ratio = args.otel_sampler_arg if args.otel_sampler_arg is not None else environ.get("OTEL_TRACES_SAMPLER_ARG")
    disabled = args.no_tracing or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return TelemetrySettings(
        service_name=_first(args.otel_service_name, environ.get("OTEL_SERVICE_NAME")) or default_service_name,
        tracing=not disabled, otlp_endpoint=endpoint,
        otlp_protocol="http/protobuf" if protocol == "http" else protocol,
        sampler=_first(args.otel_sampler, environ.get("OTEL_TRACES_SAMPLER")) or "parentbased_always_on",
        sampler_ratio=float(ratio) if ratio not in (None, "") else 1.0,
        trace_content=args.trace_content, metrics_port=args.metrics_port or None,
    )


def make_sampler(name: str, ratio: float) -> Sampler:
    """The SDK sampler for an OTEL_TRACES_SAMPLER name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    base = name.removeprefix("parentbased_")
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(base) or TraceIdRatioBased(ratio)
    return ParentBased(root) if name.startswith("parentbased_") else root


def make_exporter(endpoint: str, protocol: str) -> SpanExporter:
    """An OTLP span exporter; the HTTP one gets the /v1/traces path a base endpoint lacks."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        path = "" if endpoint.rstrip("/").endswith("/v1/traces") else "/v1/traces"
        return HttpExporter(endpoint=endpoint.rstrip("/") + path)
    raise ValueError(f"unknown OTLP protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def make_tracer_provider(settings: TelemetrySettings, processors: Sequence[SpanProcessor] = ()) -> TracerProvider:
    """A provider for this tier (not installed globally, so two tiers can live in one test process)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}),
                              sampler=make_sampler(settings.sampler, settings.sampler_ratio))
    if settings.otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(make_exporter(settings.otlp_endpoint, settings.otlp_protocol)))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


@dataclass
class Telemetry:
    """The tracing and metrics objects of one running tier."""

    settings: TelemetrySettings
    provider: TracerProvider | None = None
    metrics: TierMetrics = field(default_factory=TierMetrics)
    metrics_server: MetricsServer | None = None

    @classmethod
    def create(cls, settings: TelemetrySettings, processors: Sequence[SpanProcessor] = ()) -> Telemetry:
        """Builds the tracer provider (when tracing is on); the metrics endpoint starts with the server."""
        return cls(settings, make_tracer_provider(settings, processors) if settings.tracing else None)

    def __post_init__(self) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=self.provider or trace.NoOpTracerProvider())

    @classmethod
    def off(cls, service_name: str) -> Telemetry:
        """No tracing and no metrics endpoint (metrics are still counted in memory)."""
        return cls(TelemetrySettings(service_name, tracing=False))

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        # Health probes and reflection would make a trace every few seconds per pod: not traced.
        # GenerateMany carries many requests for as long as a connection lives: it traces each request
        # itself (generator/multiplex.py), so the call as a whole gets no span.
        # GetLoad is the pools' once-a-second probe: a trace each would drown the real ones.
        traced = traced_except(("grpc.health.v1.Health", "grpc.reflection"), (MULTIPLEXED, "GetLoad"))
        return [aio_server_interceptor(tracer_provider=self.provider, filter_=traced)] if self.provider else []

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        traced = traced_except((), (MULTIPLEXED,))
        return list(aio_client_interceptors(tracer_provider=self.provider, filter_=traced)) if self.provider else []

    def start_metrics(self, host: str) -> None:
        """Serves /metrics when a port is configured."""
        if self.settings.metrics_port is not None and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics.registry, host, self.settings.metrics_port)

    def shutdown(self) -> None:
        """Flushes pending spans and closes the metrics endpoint."""
        if self.provider is not None:
            self.provider.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None


def from_command_line(args: argparse.Namespace, default_service_name: str) -> Telemetry:
    """The entry point's one read of the OTEL_* environment."""
    return Telemetry.create(settings_from_args(args, os.environ, default_service_name))


def host_of(address: str) -> str:
    """The host part of host:port (IPv6 brackets removed); metrics bind where gRPC binds."""
    host = address.rsplit(":", 1)[0]
    return host.strip("[]") or "0.0.0.0"


def traced_except(service_prefixes: Sequence[str], methods: Sequence[str]) -> Callable[[Any], bool]:
    """The interceptors' filter: False for calls to services starting with a prefix, or to a method name.

    It runs on every call; the verdict is kept per method path (OpenTelemetry's composable filters
    re-parse the path on every call, a measurable share of a short request's CPU).
    """
    prefixes, names = tuple(service_prefixes), frozenset(methods)
    verdicts: dict[str | bytes, bool] = {}

    def traced(details: Any) -> bool:
        path = details.method
        verdict = verdicts.get(path)
        if verdict is None:
            service, _, method = (path.decode() if isinstance(path, bytes) else path).lstrip("/").partition("/")
            verdict = not (service.startswith(prefixes) or method in names)
            if len(verdicts) < _MAX_CACHED_PATHS:  # unknown paths from callers must not grow it without bound
                verdicts[path] = verdict
        return verdict

    return traced


_MAX_CACHED_PATHS = 256
