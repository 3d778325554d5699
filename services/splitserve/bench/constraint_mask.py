"""Grammar-mask cost per decode step, xgrammar against llguidance: `python -m splitserve.bench.constraint_mask`.

For each tokenizer, library and batch size: B matchers of one compiled JSON schema walk the same valid
document token by token; each step fills the B token bitmasks (the library's batched call, on the host) and
advances every matcher by one token. Printed: compile time, and the median per-step fill and advance times.
`--device cuda` also times the bitmask's copy to the device and its application to [B, V] logits there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "active"],
    "additionalProperties": False,
}
DOCUMENT = '{"name":"Ada Lovelace","age":36,"tags":["math","engines"],"active":true}'  # compact: both libraries'
# JSON grammars allow whitespace, but only a document without it is the same walk for each


@dataclass(frozen=True)
class Row:
    library: str
    vocab: int
    batch: int
    compile_ms: float
    fill_ms: float
    advance_ms: float
    advance_par_ms: float | None  # llguidance's parallel advance (the engine's), alternate steps with the plain one
    apply_ms: float | None


class Walker:
    """One library's batch of matchers over one compiled grammar (the part the benchmark times)."""

    compile_ms: float
    fill: Callable[[torch.Tensor], None]
    advance: Callable[[list[int], list[int]], None]  # (matcher indices, one token each)
    advance_par: Callable[[list[int], list[int]], None] | None = None


def _xgrammar(tokenizer: Any, vocab: int, batch: int) -> Walker:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    walker = Walker()
    walker.compile_ms = (time.perf_counter() - start) * 1e3
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
    batcher = xgr.BatchGrammarMatcher()
    walker.fill = lambda bitmask: batcher.batch_fill_next_token_bitmask(matchers, bitmask)
    walker.advance = lambda rows, tokens: _all_true(xgr.BatchGrammarMatcher.batch_accept_token(
        [matchers[i] for i in rows], tokens))
    return walker


def _llguidance(tokenizer: Any, vocab: int, batch: int) -> Walker:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
    walker = Walker()
    walker.compile_ms = (time.perf_counter() - start) * 1e3  # the grammar and B matchers (each builds its parser)
    executor = llguidance.LLExecutor()
    pairs = [(m, i) for i, m in enumerate(matchers)]
    walker.fill = lambda bitmask: llguidance.torch.fill_next_token_bitmask_par(executor, pairs, bitmask)
    walker.advance = lambda rows, tokens: _all_true([matchers[i].consume_token(t)
                                                     for i, t in zip(rows, tokens, strict=True)])
    walker.advance_par = lambda rows, tokens: _all_true(executor.consume_token_par(
        [(matchers[i], t) for i, t in zip(rows, tokens, strict=True)]))
    return walker


def _all_true(results: list[bool]) -> None:
    if not all(results):
        raise RuntimeError("a matcher refused a token of the valid document")


LIBRARIES: dict[str, Callable[[Any, int, int], Walker]] = {"xgrammar": _xgrammar, "llguidance": _llguidance}


def measure(library: str, tokenizer: Any, vocab: int, batch: int, device: torch.device) -> Row:
    walker = LIBRARIES[library](tokenizer, vocab, batch)
    tokens = tokenizer.encode(DOCUMENT, add_special_tokens=False)
    # Matcher i starts i % half tokens in, so that the batch's states differ (as real requests' do).
    half = len(tokens) // 2
    offsets = [i % half for i in range(batch)]
    _pre_advance(walker, tokens, offsets)
    everyone = list(range(batch))
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    logits = torch.zeros(batch, vocab, device=device) if device.type == "cuda" else None
    fills: list[float] = []
    applies: list[float] = []
    advances: dict[bool, list[float]] = {False: [], True: []}  # by parallel
    for step in range(len(tokens) - half):
        start = time.perf_counter()
        walker.fill(bitmask)
        filled = time.perf_counter()
        advance = walker.advance_par if walker.advance_par is not None and step % 2 == 1 else walker.advance
        parallel = advance is not walker.advance
        advance(everyone, [tokens[o + step] for o in offsets])
        advances[parallel].append(time.perf_counter() - filled)
        fills.append(filled - start)
        if logits is not None:
            applies.append(_apply_on_device(bitmask, logits))
    return Row(library, vocab, batch, walker.compile_ms, statistics.median(fills) * 1e3,
               statistics.median(advances[False]) * 1e3, _median_ms(advances[True]), _median_ms(applies))


def _cell(ms: float | None) -> str:
    return "" if ms is None else f"{ms:.3f}"


def _median_ms(seconds: list[float]) -> float | None:
    return statistics.median(seconds) * 1e3 if seconds else None


def _pre_advance(walker: Walker, tokens: list[int], offsets: list[int]) -> None:
    """Advances matcher i by its first offsets[i] tokens."""
    for step in range(max(offsets)):
        rows = [i for i, o in enumerate(offsets) if step < o]
        walker.advance(rows, [tokens[step]] * len(rows))


def _apply_on_device(bitmask: torch.Tensor, logits: torch.Tensor) -> float:
    from splitserve.generator.engines.native.constraints import apply_bitmask

    torch.cuda.synchronize()
    start = time.perf_counter()
    apply_bitmask(logits, bitmask.to(logits.device, non_blocking=True))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _load_tokenizer(spec: str) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    from splitserve.common.model_store import default_cache_dir, resolve_model

    path = resolve_model(spec, default_cache_dir())[0] if spec == "default" else Path(spec)  # a tokenizer folder
    return AutoTokenizer.from_pretrained(str(path)), Path(spec).name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", action="append", help="model or tokenizer folder, or `default` (repeatable)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1, 64, 256)")
    parser.add_argument("--library", action="append", choices=sorted(LIBRARIES))
    parser.add_argument("--device", default="cpu", help="where logits live for the apply timing (cuda: timed)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print("| library | vocab | batch | compile ms | mask fill ms/step | advance ms/step | parallel advance ms/step "
          "| apply on device ms |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.tokenizer or ["default"]:
        tokenizer, _ = _load_tokenizer(spec)
        vocab = len(tokenizer)
        for library in args.library or ["xgrammar", "llguidance"]:
            for batch in args.batch or [1, 64, 256]:
                r = measure(library, tokenizer, vocab, batch, device)
                print(f"| {r.library} | {r.vocab} | {r.batch} | {r.compile_ms:.1f} | {r.fill_ms:.3f} | "
                      f"{r.advance_ms:.3f} | {_cell(r.advance_par_ms)} | {_cell(r.apply_ms)} |", flush=True)


if __name__ == "__main__":
    main()
