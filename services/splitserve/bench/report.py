"""Human-readable lines and the stack/in-process comparison."""

from __future__ import annotations

from typing import Any


def format_level(level: dict[str, Any], name: str) -> str:
    """One block of text for one level."""
    ttft, itl, e2e = level["ttft_ms"], level["itl_ms"], level["e2e_ms"]
    lines = [
        f"[{name}] {level['level']}: {level['completed']} requests in {level['seconds']:.1f}s, "
        f"{level['requests_per_s']:.1f} req/s, {level['output_tokens_per_s']:.0f} output tok/s, "
        f"{level['messages_per_request']:.1f} messages/request",
        f"  TTFT ms p50/p90/p99 {ttft['p50']:.1f}/{ttft['p90']:.1f}/{ttft['p99']:.1f}   "
        f"ITL ms {itl['p50']:.2f}/{itl['p90']:.2f}/{itl['p99']:.2f}   "
        f"E2E ms {e2e['p50']:.0f}/{e2e['p90']:.0f}/{e2e['p99']:.0f}",
    ]
    for tier, cost in level["cpu"].items():
        lines.append(f"  CPU {tier}: {cost['cores']:.2f} cores, {cost['us_per_output_token']:.1f} µs/output token, "
                     f"{cost['ms_per_request']:.2f} ms/request")
    if level.get("unfinished"):
        lines.append(f"  {level['unfinished']} requests still running after the drain were cancelled; "
                     "their tokens are not counted (raise --drain)")
    if level["errors"]:
        lines.append(f"  errors: {level['errors']}")
    return "\n".join(lines)


def ratios(in_process: list[dict[str, Any]], stack: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per level: stack/in-process output tok/s, and the TTFT the stack adds (p50, ms)."""
    out = {}
    for alone, full in zip(in_process, stack, strict=False):
        base = alone["output_tokens_per_s"]
        out[full["level"]] = {
            "throughput_ratio": full["output_tokens_per_s"] / base if base else float("nan"),
            "added_ttft_p50_ms": full["ttft_ms"]["p50"] - alone["ttft_ms"]["p50"],
        }
    return out
