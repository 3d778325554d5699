"""Which generator replicas a pool has: a static list of host:port, or DNS names re-resolved over time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DNS_SCHEME = "dns:///"


@dataclass(frozen=True)
class PoolSpec:
    """A model name and the targets serving it (`host:port` or `dns:///name:port`)."""

    model: str
    targets: tuple[str, ...]

    @property
    def is_single_static(self) -> bool:
        """One fixed address: a mismatch there is a deployment error worth refusing to start over."""
        return len(self.targets) == 1 and not self.targets[0].startswith(DNS_SCHEME)

    @property
    def has_dns(self) -> bool:
        return any(t.startswith(DNS_SCHEME) for t in self.targets)


def split_targets(values: Iterable[str]) -> tuple[str, ...]:
    """Flattens repeated, comma-separated flag values into one tuple of targets."""
    return tuple(t.strip() for value in values for t in value.split(",") if t.strip())


def parse_pool(value: str) -> tuple[str, str]:
    """`name=addr,addr` (a --pool flag) into (name, "addr,addr")."""
    name, sep, targets = value.partition("=")
    if not sep or not name.strip() or not split_targets([targets]):
        raise ValueError(f"--pool {value!r}: expected MODEL=host:port[,host:port…] or MODEL=dns:///name:port")
    return name.strip(), targets


def pool_specs(model_name: str, generator: str, pools: Sequence[tuple[str, str]]) -> tuple[PoolSpec, ...]:
    """The default pool (our model, `--generator`) first, then each `--pool`; the first one serves requests
    that name no model."""
    specs: dict[str, list[str]] = {}
    if split_targets([generator]):
        specs[model_name] = list(split_targets([generator]))
    for name, targets in pools:
        specs.setdefault(name, []).extend(split_targets([targets]))
    if not specs:
        raise ValueError("no generator: pass --generator host:port or --pool MODEL=host:port")
    return tuple(PoolSpec(name, tuple(targets)) for name, targets in specs.items())


def split_host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"generator target {target!r} is not host:port")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(targets: Sequence[str]) -> set[str]:
    """Current addresses: static targets as given, DNS targets as one address per A/AAAA record."""
    addresses: set[str] = set()
    loop = asyncio.get_running_loop()
    for target in targets:
        if not target.startswith(DNS_SCHEME):
            addresses.add(target)
            continue
        host, port = split_host_port(target.removeprefix(DNS_SCHEME))
        try:
            records = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue  # no pods yet (a headless service with no ready endpoints has no records)
        addresses.update(join_host_port(str(record[4][0]), port) for record in records)
    return addresses
