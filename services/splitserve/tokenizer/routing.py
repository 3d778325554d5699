"""Load-aware choice of a generator replica: plain Python, no gRPC, so it is cheap to test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class ReplicaState(Enum):
    """Where a replica stands; only ACCEPTED replicas that report SERVING are routed to."""

    CONNECTING = "connecting"  # not yet answered, or lost since: its parity is checked again when it answers
    ACCEPTED = "accepted"  # answered GetModelInfo and matches our tokenizer and the pool's limits
    REFUSED = "refused"  # answered with another tokenizer or other limits: never used


@dataclass
class ReplicaLoad:
    """What the router knows about one replica's load and health."""

    address: str
    state: ReplicaState = ReplicaState.CONNECTING
    serving: bool = False
    outstanding: int = 0  # streams this tokenizer process has open on it
    reported: int = 0  # queued + running from the replica's last GetLoad (all tokenizer processes)
    outstanding_at_report: int = 0  # our share of `reported`, so others' load is not counted twice

    @property
    def is_routable(self) -> bool:
        return self.state is ReplicaState.ACCEPTED and self.serving

    @property
    def score(self) -> int:
        """Estimated requests on the replica: ours now, plus other tokenizer processes' at the last report."""
        others = max(0, self.reported - self.outstanding_at_report)
        return self.outstanding + others

    def report(self, queued_and_running: int) -> None:
        self.reported = queued_and_running
        self.outstanding_at_report = self.outstanding


def pick(replicas: Sequence[ReplicaLoad], turn: int, exclude: frozenset[str] = frozenset()) -> ReplicaLoad | None:
    """The routable replica with the lowest score; ties rotate with `turn` so light load still spreads."""
    candidates = [r for r in replicas if r.is_routable and r.address not in exclude]
    if not candidates:
        return None
    count = len(candidates)
    return min(enumerate(candidates), key=lambda item: (item[1].score, (item[0] - turn) % count))[1]
