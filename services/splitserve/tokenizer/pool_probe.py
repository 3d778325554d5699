"""One look at one generator replica: health, parity when it (re)appears, and its load report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.utils import suppress_instrumentation

from splitserve.link.types import GeneratorInfo
from splitserve.tokenizer.generator_client import GeneratorClient
from splitserve.tokenizer.parity import parity_problem
from splitserve.tokenizer.routing import ReplicaLoad, ReplicaState

log = logging.getLogger(__name__)


class ProbedGeneratorClient(GeneratorClient):
    """A generator client that can also ask the replica's grpc.health.v1 status."""

    async def is_serving(self, timeout: float) -> bool:
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


ClientFactory = Callable[[str], ProbedGeneratorClient]


@dataclass
class Replica:
    """A replica's client and what the router knows about it."""

    load: ReplicaLoad
    client: ProbedGeneratorClient
    refusal: str = ""  # why it was refused, for the start-up error and the log

    @classmethod
    def connect(cls, address: str, make_client: ClientFactory) -> Replica:
        return cls(ReplicaLoad(address), make_client(address))


async def probe(replica: Replica, fingerprint: str, reference: GeneratorInfo | None,
                make_client: ClientFactory, timeout: float) -> GeneratorInfo | None:
    """Updates the replica's health, parity and load; returns its model info when it was just accepted."""
    load = replica.load
    with suppress_instrumentation():  # a probe a second per replica must not make a trace each
        try:
            load.serving = await replica.client.is_serving(timeout)
            if not load.serving:
                return None
            accepted = await _check_parity(replica, fingerprint, reference, timeout) \
                if load.state is ReplicaState.CONNECTING else None
            if load.state is ReplicaState.ACCEPTED:
                report = await replica.client.load(timeout)
                load.report(report.queued_requests + report.running_requests)
            return accepted
        except grpc.aio.AioRpcError as error:
            await _lost(replica, error, make_client)
            return None


async def _check_parity(replica: Replica, fingerprint: str, reference: GeneratorInfo | None,
                        timeout: float) -> GeneratorInfo | None:
    info = await replica.client.model_info(timeout)
    problem = parity_problem(info, fingerprint, reference)
    if problem is None:
        replica.load.state = ReplicaState.ACCEPTED
        log.info("generator %s accepted (%s engine)", replica.load.address, info.engine_info.engine)
        return info
    replica.load.state, replica.refusal = ReplicaState.REFUSED, problem
    log.error("refusing generator %s: %s", replica.load.address, problem)
    return None


async def _lost(replica: Replica, error: grpc.aio.AioRpcError, make_client: ClientFactory) -> None:
    """Unreachable: not routed to, and checked again when it answers (it may be another process by then)."""
    load = replica.load
    if load.state is not ReplicaState.CONNECTING or load.serving:
        log.warning("generator %s unreachable: %s", load.address, error.code().name)
    load.serving, load.state = False, ReplicaState.CONNECTING
    if error.code() == grpc.StatusCode.UNAVAILABLE and load.outstanding == 0:
        # A fresh channel connects at once; the old one would wait out gRPC's reconnect backoff (up to 2 min).
        old, replica.client = replica.client, make_client(load.address)
        await old.close()
