"""Generator pools without processes: routing choice, targets, parity, and the retry before the first token."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncGenerator

import pytest

from splitserve.common.errors import EngineUnavailable, ReplicaUnavailable
from splitserve.link.types import (
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GeneratorInfo,
    TokenOutput,
)
from splitserve.tokenizer.generator_pool import GeneratorPool, GeneratorPools, PoolTiming
from splitserve.tokenizer.parity import TokenizerMismatch, parity_problem
from splitserve.tokenizer.pool_targets import PoolSpec, parse_pool, pool_specs, resolve
from splitserve.tokenizer.routing import ReplicaLoad, ReplicaState, pick

FINGERPRINT = "f" * 64
INFO = GeneratorInfo(EngineInfo("m", "bench", vocab_size=100, eos_token_ids=(2,), max_input_tokens=10,
                                max_total_tokens=20, max_new_tokens=10, default_max_new_tokens=5, max_batch_size=8,
                                capabilities=EngineCapabilities()), FINGERPRINT)


def accepted(address: str, outstanding: int = 0, serving: bool = True) -> ReplicaLoad:
    return ReplicaLoad(address, ReplicaState.ACCEPTED, serving, outstanding)


def test_pick_prefers_the_least_outstanding_and_skips_unroutable() -> None:
    replicas = [accepted("a", 3), accepted("b", 1), accepted("c", 0, serving=False),
                ReplicaLoad("d", ReplicaState.REFUSED, True), ReplicaLoad("e", ReplicaState.CONNECTING, True)]
    assert all(pick(replicas, turn).address == "b" for turn in range(5))  # type: ignore[union-attr]
    assert pick(replicas, 0, exclude=frozenset({"a", "b"})) is None


def test_ties_rotate_so_light_load_spreads_evenly() -> None:
    replicas = [accepted(name) for name in "abc"]
    picks = Counter(pick(replicas, turn).address for turn in range(30))  # type: ignore[union-attr]
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_load_reports_count_other_tokenizers_once() -> None:
    busy, idle = accepted("busy", 1), accepted("idle", 2)
    busy.report(9)  # 1 of them ours, 8 from other tokenizer processes
    idle.report(2)  # only ours
    assert (busy.score, idle.score) == (9, 2)
    assert pick([busy, idle], 0).address == "idle"  # type: ignore[union-attr]


def test_parity_refuses_another_tokenizer_or_other_limits() -> None:
    assert parity_problem(INFO, FINGERPRINT, None) is None
    assert parity_problem(INFO, FINGERPRINT, INFO) is None
    assert "different tokenizer" in (parity_problem(INFO, "0" * 64, None) or "")
    other = dataclasses.replace(INFO, engine_info=dataclasses.replace(INFO.engine_info, max_total_tokens=40))
    assert "max_total_tokens is 40" in (parity_problem(other, FINGERPRINT, INFO) or "")


def test_pool_flags() -> None:
    assert parse_pool("smol=a:1,b:2") == ("smol", "a:1,b:2")
    with pytest.raises(ValueError, match="MODEL=host:port"):
        parse_pool("a:1")
    specs = pool_specs("smol", "a:1, b:2", [("big", "dns:///gen:50052"), ("smol", "c:3")])
    assert specs == (PoolSpec("smol", ("a:1", "b:2", "c:3")), PoolSpec("big", ("dns:///gen:50052",)))
    assert specs[0].is_single_static is False and specs[1].has_dns
    assert PoolSpec("x", ("a:1",)).is_single_static
    with pytest.raises(ValueError, match="no generator"):
        pool_specs("smol", "", [])


async def test_dns_targets_resolve_to_one_address_per_record() -> None:
    assert await resolve(["dns:///localhost:50052", "10.0.0.1:7"]) >= {"127.0.0.1:50052", "10.0.0.1:7"}
    assert await resolve(["dns:///no-such-host.invalid:1"]) == set()


class FakeGeneratorClient:
    """A stand-in replica (no process): answers probes; `fail_first` fails a stream before its first token."""

    def __init__(self, address: str, fingerprint: str = FINGERPRINT, fail_first: bool = False) -> None:
        self.address, self.fingerprint, self.fail_first = address, fingerprint, fail_first
        self.streams = 0

    async def is_serving(self, timeout: float) -> bool:
        return True

    async def model_info(self, timeout: float) -> GeneratorInfo:
        return dataclasses.replace(INFO, tokenizer_fingerprint=self.fingerprint)

    async def load(self, timeout: float = 5.0) -> EngineLoad:
        return EngineLoad(0, 0, 0.0, 8)

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        self.streams += 1
        if self.fail_first:
            raise ReplicaUnavailable("generator tier: UNAVAILABLE: connection reset")
        yield GenerationChunk([TokenOutput(7)], FinishReason.LENGTH, None, 1, 1, None)

    async def close(self) -> None:
        pass


async def started_pool(clients: dict[str, FakeGeneratorClient]) -> GeneratorPool:
    pool = GeneratorPool(PoolSpec("smol", tuple(clients)), FINGERPRINT, clients.__getitem__,  # type: ignore[arg-type]
                         PoolTiming(probe_interval_s=0.05))
    await pool.start(wait_seconds=5)
    for _ in range(100):  # every replica probed once
        if all(r.load.state is not ReplicaState.CONNECTING for r in pool.replicas()):
            break
        await asyncio.sleep(0.02)
    return pool


async def test_a_stream_that_fails_before_its_first_token_is_retried_once_elsewhere() -> None:
    clients = {"a:1": FakeGeneratorClient("a:1", fail_first=True), "b:2": FakeGeneratorClient("b:2")}
    pool = await started_pool(clients)
    try:
        for _ in range(4):
            chunks = [c async for c in pool.generate(GenerationRequest("r", [1]), timeout=5)]
            assert chunks[-1].finish_reason is FinishReason.LENGTH
            pool.replicas()[0].load.serving = pool.replicas()[1].load.serving = True  # as the next probe would
        assert clients["b:2"].streams == 4 and clients["a:1"].streams >= 1
    finally:
        await pool.close()


async def test_without_another_replica_the_failure_reaches_the_caller() -> None:
    pool = await started_pool({"a:1": FakeGeneratorClient("a:1", fail_first=True)})
    try:
        with pytest.raises(ReplicaUnavailable):
            [c async for c in pool.generate(GenerationRequest("r", [1]), timeout=5)]
        with pytest.raises(EngineUnavailable, match="no generator replica"):  # marked down until probed again
            [c async for c in pool.generate(GenerationRequest("r", [1]), timeout=5)]
    finally:
        await pool.close()


async def test_a_mismatched_replica_is_refused_and_never_used() -> None:
    clients = {"good:1": FakeGeneratorClient("good:1"), "bad:2": FakeGeneratorClient("bad:2", fingerprint="0" * 64)}
    pool = await started_pool(clients)
    try:
        states = {r.load.address: r.load.state for r in pool.replicas()}
        assert states == {"good:1": ReplicaState.ACCEPTED, "bad:2": ReplicaState.REFUSED}
        for _ in range(6):
            [c async for c in pool.generate(GenerationRequest("r", [1]), timeout=5)]
        assert (clients["good:1"].streams, clients["bad:2"].streams) == (6, 0)
    finally:
        await pool.close()


async def test_a_single_mismatched_generator_refuses_to_start() -> None:
    pool = GeneratorPool(PoolSpec("smol", ("bad:2",)), FINGERPRINT,
                         lambda address: FakeGeneratorClient(address, fingerprint="0" * 64),  # type: ignore[arg-type,return-value]
                         PoolTiming(probe_interval_s=0.05))
    try:
        with pytest.raises(TokenizerMismatch, match="different tokenizer"):
            await pool.start(wait_seconds=5)
    finally:
        await pool.close()


def test_unknown_models_have_no_pool() -> None:
    pools = GeneratorPools([GeneratorPool(PoolSpec(name, ("a:1",)), FINGERPRINT, FakeGeneratorClient)  # type: ignore[arg-type]
                            for name in ("smol", "big")])
    assert pools.get("").model == "smol" and pools.get("big").model == "big"  # type: ignore[union-attr]
    assert pools.get("nope") is None
