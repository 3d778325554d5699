"""Where a request's time to first token goes, hop by hop, from the spans both tiers export.

Each request's trace has the tokenizer's server span (with a `tokenize` child and a `first_token`
event) and the generator's span for the request (with its own `first_token` event). Every process
runs on one host, so their wall clocks agree; the hops are medians over the level's requests.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from splitserve.bench.span_sink import SpanRecord
from splitserve.link.spans import SPAN_NAME

TOKENIZER, GENERATOR = "splitserve-tokenizer", "splitserve-generator"
TEXT_METHODS = ("/splitserve.api.text.v1.TextGenerationService/GenerateStream",
                "/splitserve.api.text.v1.TextGenerationService/Generate")
GENERATOR_SPAN = SPAN_NAME  # the generator's span of each request on its multiplexed stream

HOPS = (
    ("tokenizer: handler to prompt tokenized", "tokenized"),
    ("tokenizer to generator: the request arrives", "to_generator"),
    ("generator: the engine's first token (validate, queue, prefill, sample)", "engine"),
    ("generator to tokenizer: the first token arrives", "to_tokenizer"),
)


def _per_trace(spans: list[SpanRecord]) -> dict[str, dict[str, SpanRecord]]:
    traces: dict[str, dict[str, SpanRecord]] = defaultdict(dict)
    for span in spans:
        if span.service == TOKENIZER and span.name in TEXT_METHODS:
            traces[span.trace_id]["text"] = span
        elif span.service == TOKENIZER and span.name == "tokenize":
            traces[span.trace_id]["tokenize"] = span
        elif span.service == GENERATOR and span.name == GENERATOR_SPAN:
            traces[span.trace_id]["generator"] = span
    return traces


def request_hops(spans: list[SpanRecord]) -> list[dict[str, float]]:
    """Per complete request: each hop in ms, and the tokenizer's own time to first token."""
    out = []
    for parts in _per_trace(spans).values():
        text, tokenize, generator = parts.get("text"), parts.get("tokenize"), parts.get("generator")
        if text is None or tokenize is None or generator is None:
            continue
        gen_first, text_first = generator.events.get("first_token"), text.events.get("first_token")
        if gen_first is None or text_first is None:
            continue
        out.append({"tokenized": (tokenize.end_ns - text.start_ns) / 1e6,
                    "to_generator": (generator.start_ns - tokenize.end_ns) / 1e6,
                    "engine": (gen_first - generator.start_ns) / 1e6,
                    "to_tokenizer": (text_first - gen_first) / 1e6,
                    "tokenizer_ttft": (text_first - text.start_ns) / 1e6})
    return out


def hop_table(spans: list[SpanRecord], client_ttft_p50_ms: float) -> dict[str, Any]:
    """Median of each hop over the requests; the client's hops are what its TTFT adds to the tokenizer's."""
    hops = request_hops(spans)
    if not hops:
        return {"requests": 0}
    median = {key: statistics.median(h[key] for h in hops) for key in hops[0]}
    return {"requests": len(hops), "median_ms": median,
            "client_to_tokenizer_and_back_ms": client_ttft_p50_ms - median["tokenizer_ttft"]}


def format_hops(table: dict[str, Any], in_process_ttft_p50_ms: float | None = None) -> str:
    if not table.get("requests"):
        return "  hops: no complete traces arrived"
    median = table["median_ms"]
    lines = [f"  time to first token, hop by hop (p50 of {table['requests']} requests, ms):",
             f"    client to tokenizer and back (client TTFT p50 - tokenizer's): "
             f"{table['client_to_tokenizer_and_back_ms']:.2f}"]
    lines += [f"    {label}: {median[key]:.2f}" for label, key in HOPS]
    if in_process_ttft_p50_ms is not None:
        lines.append(f"    (the engine alone, in-process: {in_process_ttft_p50_ms:.2f})")
    return "\n".join(lines)
