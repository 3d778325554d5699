"""What the bench records per request, and the statistics it reports per load level."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """Timestamps (perf_counter seconds) and outcome of one request."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    end: float | None = None
    output_tokens: int = 0
    messages: int = 0
    error: str | None = None

    def on_message(self) -> None:
        self.messages += 1
        if self.first is None:
            self.first = time.perf_counter()

    def finish(self, output_tokens: int) -> None:
        self.end = time.perf_counter()
        self.output_tokens = output_tokens

    def fail(self, code: str) -> None:
        self.end = time.perf_counter()
        self.error = code

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and self.first is not None

    def tokens_between(self, start: float, end: float) -> float:
        """Output tokens of a finished request that arrived within [start, end].

        The first token arrives at `first`; the rest are taken as spread evenly up to `end` (a stream's
        inter-token latency is steady). Counting tokens, not completed requests, keeps throughput exact
        when streams run in lockstep waves, as an engine's batch does when every stream starts together.
        """
        if not self.ok or self.output_tokens < 1:
            return 0.0
        assert self.first is not None and self.end is not None
        first = 1.0 if start <= self.first <= end else 0.0
        rest, span = self.output_tokens - 1, self.end - self.first
        if rest == 0 or span <= 0:
            return first + (rest if start <= self.end <= end else 0)
        overlap = max(0.0, min(end, self.end) - max(start, self.first))
        return first + rest * overlap / span


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus the mean; NaN when there are no values."""
    if not values:
        return {**{f"p{p}": math.nan for p in points}, "mean": math.nan}
    ordered = sorted(values)
    out = {f"p{p}": ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] for p in points}
    out["mean"] = sum(ordered) / len(ordered)
    return out


def latency_stats(records: list[RequestRecord]) -> dict[str, dict[str, float]]:
    """TTFT, inter-token latency (time per output token after the first) and end-to-end, in ms."""
    done = [r for r in records if r.ok]
    ttft = [(r.first - r.start) * 1e3 for r in done if r.first is not None]
    e2e = [(r.end - r.start) * 1e3 for r in done if r.end is not None]
    itl = [(r.end - r.first) * 1e3 / (r.output_tokens - 1) for r in done
           if r.end is not None and r.first is not None and r.output_tokens > 1]
    return {"ttft_ms": percentiles(ttft), "itl_ms": percentiles(itl), "e2e_ms": percentiles(e2e)}


def errors_by_code(records: list[RequestRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        if record.error is not None:
            counts[record.error] = counts.get(record.error, 0) + 1
    return counts
