"""Starts the tokenizer tier: checks the generator's tokenizer, then serves the public API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from splitserve.api.text.v1 import text_pb2, text_pb2_grpc
from splitserve.common.admission import InflightLimit
from splitserve.common.grpc_server import BoundServer, create_server, server_options, wait_for_stop_signal
from splitserve.common.request_telemetry import RequestTracker
from splitserve.common.telemetry import Telemetry, host_of
from splitserve.tokenizer import edge
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.frontend import TextFrontend
from splitserve.tokenizer.generator_pool import GeneratorPools, build_pools, client_factory
from splitserve.tokenizer.http.app import OpenAIApi, build_app
from splitserve.tokenizer.http.server import HttpServer
from splitserve.tokenizer.parity import TokenizerMismatch  # noqa: F401  (re-exported)
from splitserve.tokenizer.servicer import TextGenerationServicer
from splitserve.tokenizer.text_codec import TextCodec

log = logging.getLogger(__name__)

SERVICE_NAME = text_pb2.DESCRIPTOR.services_by_name["TextGenerationService"].full_name
OTEL_SERVICE_NAME = "splitserve-tokenizer"


@dataclass
class TokenizerServer:
    """A running tokenizer tier."""

    bound: BoundServer
    generator: GeneratorPools  # one pool of replicas per served model
    config: TokenizerConfig
    telemetry: Telemetry = field(default_factory=lambda: Telemetry.off(OTEL_SERVICE_NAME))
    http: HttpServer | None = None  # the OpenAI-compatible API, when --http-address is set

    @property
    def port(self) -> int:
        return self.bound.port

    @property
    def http_port(self) -> int:
        assert self.http is not None, "the HTTP API is off (no --http-address)"
        return self.http.port

    async def stop(self, grace: float | None = None) -> None:
        """Drains both APIs together (NOT_SERVING, in-flight calls get the grace period), then closes."""
        grace = self.config.grace_seconds if grace is None else grace
        draining = [self.bound.drain(grace)]
        if self.http is not None:
            draining.append(self.http.drain(grace))
        await asyncio.gather(*draining)
        await self.generator.close()
        self.telemetry.shutdown()


async def start_tokenizer(config: TokenizerConfig, telemetry: Telemetry | None = None) -> TokenizerServer:
    """Loads the tokenizer, waits for the generator, checks fingerprints, then reports SERVING."""
    telemetry = telemetry or Telemetry.off(OTEL_SERVICE_NAME)
    limit = InflightLimit(config.max_inflight_requests)  # one bound for both APIs
    bound = await create_server(config.address, [SERVICE_NAME],
                                [*telemetry.server_interceptors(), *edge.public_interceptors(config, limit)],
                                credentials=edge.public_credentials(config),
                                options=server_options(config.max_receive_message_bytes, config.max_concurrent_streams))
    frontend = TextFrontend(config, RequestTracker(telemetry, "tokenizer", config.model_name))
    text_pb2_grpc.add_TextGenerationServiceServicer_to_server(TextGenerationServicer(frontend), bound.server)
    await bound.server.start()  # NOT_SERVING until the checks below pass
    codec = await asyncio.to_thread(TextCodec, config.model_path)
    make_client = client_factory(telemetry.client_interceptors(),
                                 credentials=edge.generator_credentials(config), tracer=telemetry.tracer,
                                 multiplexed=config.generator_transport == "many",
                                 tls_server_name=config.generator_tls_server_name)
    generator = build_pools(config, codec.fingerprint, make_client)
    http = _http_server(config, frontend, limit, bound, generator, telemetry)
    try:  # a pool whose fixed replicas all fail the parity check raises TokenizerMismatch
        if http is not None:
            await http.start()  # /health says 503 until the checks pass, like grpc.health.v1
        await generator.start(config.generator_wait_seconds)
    except BaseException:
        await bound.server.stop(0)
        if http is not None:
            await http.drain(0)
        await generator.close()
        raise
    frontend.set_ready(codec, generator)
    telemetry.start_metrics(host_of(config.address))
    generator.watch(_readiness(bound))  # SERVING while a replica is usable (it is now: start waited for one)
    log.info("tokenizer tier serving %s on port %d%s (generator pools: %s)", config.model_name, bound.port,
             f", HTTP on port {http.port}" if http else "", ", ".join(generator.models))
    return TokenizerServer(bound, generator, config, telemetry, http)


def _http_server(config: TokenizerConfig, frontend: TextFrontend, limit: InflightLimit, bound: BoundServer,
                 generator: GeneratorPools, telemetry: Telemetry) -> HttpServer | None:
    """The OpenAI-compatible API on --http-address (TLS with the public port's certificate), or None."""
    if config.http_address is None:
        return None

    def serving() -> bool:
        return frontend.is_ready and generator.is_usable and not bound.health.draining

    api = OpenAIApi(frontend, limit, serving, config.auth_token)
    tls = (config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    return HttpServer(build_app(api, telemetry.provider), config.http_address, config.grace_seconds, tls)


def _readiness(bound: BoundServer) -> Callable[[bool], None]:
    """Reports the pools' usability as the server's health; each change is set by a task of its own, which
    sets the latest value (tasks may interleave, and the last word must win)."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    latest = [True]

    async def apply() -> None:
        await bound.health.set(latest[0])

    def report(usable: bool) -> None:
        log.log(logging.INFO if usable else logging.WARNING, "generator replicas usable: %s; health %s",
                usable, "SERVING" if usable else "NOT_SERVING")
        latest[0] = usable
        task = loop.create_task(apply())
        pending.add(task)
        task.add_done_callback(pending.discard)

    return report


async def run_tokenizer(config: TokenizerConfig, telemetry: Telemetry | None = None) -> None:
    """The tokenizer process: serve until SIGTERM, then drain and stop."""
    server = await start_tokenizer(config, telemetry)
    host = config.address.rsplit(":", 1)[0]
    http = f" (HTTP on {host_of(config.http_address)}:{server.http_port})" if config.http_address else ""
    print(f"tokenizer ready on {host}:{server.port}{http}", flush=True)
    await wait_for_stop_signal()
    log.info("stopping: NOT_SERVING, finishing in-flight calls within %.1fs", config.grace_seconds)
    await server.stop()
