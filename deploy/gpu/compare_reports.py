"""Compares bench reports run in interleaved rounds: each stack report against the in-process
report run just before it, then, per stack variant and level, the ratios' mean and range.

    python3 deploy/gpu/compare_reports.py in_process_1.json stack_1.json in_process_2.json stack_2.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from typing import Any


def _variant(report: dict[str, Any]) -> str:
    flags = report.get("args", {}).get("generator_arg", [])
    # Reports before the native engine's default changed carry no flag for "in the generator".
    name = "engine process" if "--engine-process" in flags else "engine in generator"
    switch = [f.split("=", 1)[1] for f in flags if f.startswith("--gil-switch-interval-ms=")]
    return f"{name}, GIL {switch[0]} ms" if switch else name


def _costs(level: dict[str, Any]) -> str:
    """Tokenizer cores per 10,000 output tok/s, and the generator's CPU per output token."""
    cpu, rate = level.get("cpu", {}), level["output_tokens_per_s"]
    tokenizer = cpu.get("tokenizer", {}).get("cores", float("nan")) * 10_000 / rate if rate else float("nan")
    generator = cpu.get("generator", {}).get("us_per_output_token", float("nan"))
    return f"{tokenizer:>12.2f}{generator:>12.1f}"


def _pairs(paths: list[str]) -> list[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """(round, variant, in-process level, stack level) for every stack level, in file order."""
    pairs, alone, round_no = [], None, 0
    for path in paths:
        with open(path) as file:
            report = json.load(file)
        if "in_process" in report:
            alone, round_no = report["in_process"], round_no + 1
            continue
        if alone is None:
            raise SystemExit(f"{path}: a stack report needs an in-process report before it")
        pairs += [(round_no, _variant(report), a, s) for a, s in zip(alone, report["stack"], strict=True)]
    return pairs


def main(paths: list[str]) -> None:
    pairs = _pairs(paths)
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    print(f"{'round':<7}{'stack':<34}{'level':<18}{'in-process tok/s':>18}{'stack tok/s':>14}{'ratio':>8}"
          f"{'TTFT p50 +ms':>14}{'tok c/10k':>12}{'gen µs/tok':>12}")
    for round_no, variant, a, s in pairs:
        ratio = s["output_tokens_per_s"] / a["output_tokens_per_s"] if a["output_tokens_per_s"] else float("nan")
        ratios[(variant, s["level"])].append(ratio)
        added = s["ttft_ms"]["p50"] - a["ttft_ms"]["p50"]
        print(f"{round_no:<7}{variant:<34}{s['level']:<18}{a['output_tokens_per_s']:>18.0f}"
              f"{s['output_tokens_per_s']:>14.0f}{ratio:>8.3f}{added:>14.1f}{_costs(s)}")
    if max((round_no for round_no, *_ in pairs), default=0) > 1:
        print(f"\n{'stack':<34}{'level':<18}{'rounds':>7}{'mean ratio':>12}{'min':>8}{'max':>8}")
        for (variant, level), values in ratios.items():
            print(f"{variant:<34}{level:<18}{len(values):>7}{statistics.fmean(values):>12.3f}"
                  f"{min(values):>8.3f}{max(values):>8.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
