"""A pool of generator replicas serving one model: load-aware routing, health, parity, one retry.

The pool has the same `generate(request, timeout)` as GeneratorClient, so the pipeline does not know
whether it talks to one replica or many. A background task re-resolves DNS targets, probes each
replica's health and load, and checks the parity of replicas that (re)appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from splitserve.common.errors import EngineUnavailable, ReplicaUnavailable
from splitserve.link.types import GenerationChunk, GenerationRequest, GeneratorInfo
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.parity import TokenizerMismatch, parity_problem
from splitserve.tokenizer.pool_probe import ClientFactory, ProbedGeneratorClient, Replica, probe
from splitserve.tokenizer.pool_targets import PoolSpec, pool_specs, resolve
from splitserve.tokenizer.routing import ReplicaState, pick

log = logging.getLogger(__name__)


class TokenGenerator(Protocol):
    """What the pipeline needs from the generator tier: one replica (GeneratorClient) or a pool."""

    def generate(self, request: GenerationRequest,
                 timeout: float | None) -> AsyncGenerator[GenerationChunk, None]: ...


@dataclass(frozen=True)
class PoolTiming:
    """How often the pool looks at its replicas."""

    probe_interval_s: float = 1.0  # health + load of every replica; also how fast a returning replica is used
    resolve_interval_s: float = 5.0  # DNS targets: how fast new or removed pods are noticed
    probe_timeout_s: float = 2.0


class GeneratorPool:
    """Generator replicas of one model, behind one `generate`."""

    def __init__(self, spec: PoolSpec, fingerprint: str, make_client: ClientFactory,
                 timing: PoolTiming = PoolTiming()) -> None:
        self.spec = spec
        self.info: GeneratorInfo | None = None  # the first accepted replica's: the pool's limits
        self._fingerprint = fingerprint
        self._make_client = make_client
        self._timing = timing
        self._replicas: dict[str, Replica] = {}
        self._retired: list[Replica] = []  # removed from DNS: closed once their streams end
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] = lambda: None  # called when replicas may have become (un)usable

    @property
    def model(self) -> str:
        return self.spec.model

    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    @property
    def is_usable(self) -> bool:
        """Some replica is accepted and serving: a request would be routed."""
        return any(r.load.is_routable for r in self._replicas.values())

    async def start(self, wait_seconds: float) -> None:
        """Starts the maintenance task and waits until one replica is accepted."""
        await self._sync_addresses()
        self._task = asyncio.create_task(self._maintain(), name=f"generator-pool-{self.model}")
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while self.info is None:
            self._raise_if_all_refused()
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no generator of model {self.model!r} ({', '.join(self.spec.targets)}) "
                                   f"answered within {wait_seconds:.0f}s")
            await asyncio.sleep(0.1)

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        """Streams from the least-loaded replica; retries once elsewhere if it fails before the first chunk."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        tried: set[str] = set()
        while True:
            replica = self._pick(tried)
            tried.add(replica.load.address)
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            produced = False
            replica.load.outstanding += 1
            try:
                async with contextlib.aclosing(replica.client.generate(request, remaining)) as chunks:
                    async for chunk in chunks:
                        produced = True
                        yield chunk
                return
            except ReplicaUnavailable as error:
                replica.load.serving = False  # until the next probe says otherwise
                self.on_change()
                if produced or len(tried) > 1 or not self._has_other(tried):
                    raise
                log.warning("request %s: generator %s failed before its first token (%s); retrying elsewhere",
                            request.request_id, replica.load.address, error.message)
            finally:
                replica.load.outstanding -= 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in [*self._replicas.values(), *self._retired]:
            await replica.client.close()
        self._replicas.clear()
        self._retired.clear()

    def _pick(self, tried: set[str]) -> Replica:
        self._turn += 1
        chosen = pick([r.load for r in self._replicas.values()], self._turn, frozenset(tried))
        if chosen is None:
            raise EngineUnavailable(f"no generator replica of model {self.model!r} is serving; retry shortly")
        return self._replicas[chosen.address]

    def _has_other(self, tried: set[str]) -> bool:
        return any(r.load.is_routable and a not in tried for a, r in self._replicas.items())

    def _raise_if_all_refused(self) -> None:
        """A fixed list whose every replica is refused can never serve: say so instead of waiting."""
        replicas = self._replicas.values()
        if self.spec.has_dns or not replicas or any(r.load.state is not ReplicaState.REFUSED for r in replicas):
            return
        reasons = "; ".join(f"the generator at {r.load.address}: {r.refusal}" for r in replicas)
        raise TokenizerMismatch(f"refusing to serve model {self.model!r}: {reasons}")

    async def _maintain(self) -> None:
        """Re-resolves and probes for as long as the pool is open; one failure never stops the loop."""
        loop = asyncio.get_running_loop()
        next_resolve = loop.time() + self._timing.resolve_interval_s
        while True:
            if self.spec.has_dns and loop.time() >= next_resolve:
                next_resolve = loop.time() + self._timing.resolve_interval_s
                await self._sync_addresses()
            await self._probe_all()
            await asyncio.sleep(self._timing.probe_interval_s)

    async def _probe_all(self) -> None:
        replicas = list(self._replicas.values())
        results = await asyncio.gather(*(probe(r, self._fingerprint, self.info, self._make_client,
                                               self._timing.probe_timeout_s) for r in replicas),
                                       return_exceptions=True)
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("probing generator %s failed: %r", replica.load.address, result)
            elif result is not None:
                self._adopt(replica, result)
        self.on_change()
        await self._close_drained()

    def _adopt(self, replica: Replica, info: GeneratorInfo) -> None:
        """The first accepted replica sets the pool's limits; others accepted in the same round must match."""
        if self.info is None:
            self.info = info
            return
        problem = parity_problem(info, self._fingerprint, self.info)
        if problem is not None:
            replica.load.state, replica.refusal = ReplicaState.REFUSED, problem
            log.error("refusing generator %s: %s", replica.load.address, problem)

    async def _sync_addresses(self) -> None:
        addresses = await resolve(self.spec.targets)
        for address in addresses - self._replicas.keys():
            log.info("pool %s: generator %s added", self.model, address)
            self._replicas[address] = Replica.connect(address, self._make_client)
        for address in self._replicas.keys() - addresses:
            log.info("pool %s: generator %s removed", self.model, address)
            self._retired.append(self._replicas.pop(address))

    async def _close_drained(self) -> None:
        for replica in [r for r in self._retired if r.load.outstanding == 0]:
            self._retired.remove(replica)
            await replica.client.close()


class GeneratorPools:
    """The pools of every model this tokenizer tier serves; the first serves requests naming no model."""

    def __init__(self, pools: Sequence[GeneratorPool]) -> None:
        self._pools = {pool.model: pool for pool in pools}
        self.default = pools[0]
        self._listener: Callable[[bool], None] | None = None
        self._usable = False

    @property
    def is_usable(self) -> bool:
        """Some pool can route a request. Every tokenizer process shares the same pools, so one whose model
        has no replica left is no reason to send this process's other traffic elsewhere."""
        return any(pool.is_usable for pool in self._pools.values())

    def watch(self, listener: Callable[[bool], None]) -> None:
        """Calls `listener(usable)` now and whenever `is_usable` changes (readiness follows it)."""
        self._listener, self._usable = listener, self.is_usable
        for pool in self._pools.values():
            pool.on_change = self._check
        listener(self._usable)

    def _check(self) -> None:
        usable = self.is_usable
        if usable != self._usable and self._listener is not None:
            self._usable = usable
            self._listener(usable)

    @property
    def models(self) -> list[str]:
        return list(self._pools)

    def get(self, model: str) -> GeneratorPool | None:
        return self._pools.get(model) if model else self.default

    async def start(self, wait_seconds: float) -> None:
        await asyncio.gather(*(pool.start(wait_seconds) for pool in self._pools.values()))

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()


def client_factory(interceptors: Sequence[grpc.aio.ClientInterceptor], **options: Any) -> ClientFactory:
    """The one place generator clients are built; `options` are GeneratorClient's keywords (credentials, …)."""

    def make(address: str) -> ProbedGeneratorClient:
        return ProbedGeneratorClient(address, interceptors, **options)

    return make


def build_pools(config: TokenizerConfig, fingerprint: str, make_client: ClientFactory) -> GeneratorPools:
    """The pools named by --generator and --pool (not started)."""
    specs = pool_specs(config.model_name, config.generator_address, config.generator_pools)
    return GeneratorPools([GeneratorPool(spec, fingerprint, make_client) for spec in specs])
