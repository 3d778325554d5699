"""Starts the generator tier: engine, servicer, health and reflection on one gRPC server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from transformers import AutoTokenizer

from splitserve.api.tokens.v1 import tokens_pb2, tokens_pb2_grpc
from splitserve.common import tls
from splitserve.common.fingerprint import tokenizer_fingerprint
from splitserve.common.grpc_server import BoundServer, create_server, server_options, wait_for_termination
from splitserve.common.request_telemetry import RequestTracker
from splitserve.common.telemetry import Telemetry, host_of
from splitserve.generator.config import GeneratorConfig, apply_process_settings
from splitserve.generator.engine import Engine, create_engine
from splitserve.generator.servicer import TokenGenerationServicer

log = logging.getLogger(__name__)

SERVICE_NAME = tokens_pb2.DESCRIPTOR.services_by_name["TokenGenerationService"].full_name
OTEL_SERVICE_NAME = "splitserve-generator"


@dataclass
class GeneratorServer:
    """A running generator tier."""

    bound: BoundServer
    engine: Engine
    config: GeneratorConfig
    telemetry: Telemetry = field(default_factory=lambda: Telemetry.off(OTEL_SERVICE_NAME))

    @property
    def port(self) -> int:
        return self.bound.port

    async def stop(self, grace: float | None = None) -> None:
        await self.bound.drain(self.config.grace_seconds if grace is None else grace)
        await self.engine.stop()
        self.telemetry.shutdown()


async def start_generator(config: GeneratorConfig, telemetry: Telemetry | None = None) -> GeneratorServer:
    """Binds the port, loads and warms the engine, then reports SERVING."""
    telemetry = telemetry or Telemetry.off(OTEL_SERVICE_NAME)
    bound = await create_server(config.address, [SERVICE_NAME], telemetry.server_interceptors(),
                                credentials=tls.server_credentials(config.tls_cert, config.tls_key,
                                                                   config.tls_client_ca),
                                options=server_options(config.max_receive_message_bytes, config.max_concurrent_streams))
    loop = asyncio.get_running_loop()

    pending: set[asyncio.Task[None]] = set()

    def on_health(serving: bool) -> None:  # called from engine tasks; keep a reference until done
        task = loop.create_task(bound.health.set(serving))
        pending.add(task)
        task.add_done_callback(pending.discard)

    engine = create_engine(config, on_health)
    fingerprint = await asyncio.to_thread(lambda: tokenizer_fingerprint(AutoTokenizer.from_pretrained(
        config.model_path)))
    servicer = TokenGenerationServicer(engine, fingerprint, RequestTracker(telemetry, "generator", config.model_name))
    tokens_pb2_grpc.add_TokenGenerationServiceServicer_to_server(servicer, bound.server)
    await bound.server.start()  # health answers NOT_SERVING while the model loads
    telemetry.start_metrics(host_of(config.address))
    try:
        await engine.start()
    except BaseException:
        await engine.stop()  # its loop thread is not a daemon: a half-started engine would hang exit
        await bound.server.stop(0)
        telemetry.shutdown()  # frees the metrics port too: a failed start must leave nothing bound
        raise
    servicer.ready = True
    await bound.health.set(True)
    log.info("generator serving %s (%s engine) on port %d", config.model_name, config.engine, bound.port)
    return GeneratorServer(bound, engine, config, telemetry)


async def run_generator(config: GeneratorConfig, telemetry: Telemetry | None = None) -> None:
    """The generator process: serve until SIGTERM, then drain and stop."""
    apply_process_settings(config)
    server = await start_generator(config, telemetry)
    print(f"generator ready on {config.address.rsplit(':', 1)[0]}:{server.port}", flush=True)
    try:
        await wait_for_termination(server.bound, config.grace_seconds)
    finally:
        await server.engine.stop()
        server.telemetry.shutdown()
