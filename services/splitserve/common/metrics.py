"""Prometheus metrics of one tier, in a registry of its own so two tiers can share a process."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Latencies of a small model on CPU are milliseconds; of a large one under load, seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class TierMetrics:
    """The request metrics both tiers export (each tier measures at its own edge)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.time_to_first_token = Histogram(
            "splitserve_time_to_first_token_seconds", "From request arrival to the first generated token.",
            buckets=TTFT_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "splitserve_inter_token_latency_seconds", "Time between generated tokens after the first message.",
            buckets=ITL_BUCKETS, registry=r)
        self.request_duration = Histogram(
            "splitserve_request_duration_seconds", "End-to-end time of finished requests, errors included.",
            buckets=E2E_BUCKETS, registry=r)
        self.queued = Gauge("splitserve_requests_queued", "Requests accepted and waiting for their first token.",
                            registry=r)
        self.running = Gauge("splitserve_requests_running", "Requests streaming tokens.", registry=r)
        self.requests = Counter("splitserve_requests", "Finished generation requests.", registry=r)
        self.prompt_tokens = Counter("splitserve_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.completion_tokens = Counter("splitserve_completion_tokens", "Tokens generated for finished requests.",
                                         registry=r)
        self.errors = Counter("splitserve_request_errors", "Requests that ended with a non-OK gRPC status.",
                              ["code"], registry=r)


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes (prometheus-client's server on a daemon thread)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
