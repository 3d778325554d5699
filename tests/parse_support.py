"""Feeding the output parsers text cut into pieces, and what they made of it (for the parser tests)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from splitserve.tokenizer.output_parsing import OutputParsers, collect_tool_calls
from splitserve.tokenizer.reasoning import ThinkReasoningParser
from splitserve.tokenizer.tool_parsers import make_tool_parser
from splitserve.tokenizer.types import OutputParsing, TextChunk, ToolCall


@dataclass(frozen=True)
class Parsed:
    """Everything a parse produced, whole: what the unary API returns."""

    content: str
    reasoning: str = ""
    calls: tuple[ToolCall, ...] = ()
    error: str = ""
    stop: str | None = None


def counter_ids() -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def tool_parse(name: str, pieces: Sequence[str]) -> Parsed:
    parser = make_tool_parser(name, counter_ids())
    outs = [parser.feed(p) for p in pieces] + [parser.finish()]
    chunks = [TextChunk(o.content, tool_calls=o.tool_calls) for o in outs]
    chunks[-1] = TextChunk(chunks[-1].text, tool_calls=chunks[-1].tool_calls, void_tool_call=parser.void_call)
    return Parsed("".join(o.content for o in outs), calls=tuple(collect_tool_calls(chunks)), error=parser.error)


def think_parse(pieces: Sequence[str], starts_in_reasoning: bool = False) -> Parsed:
    parser = ThinkReasoningParser(starts_in_reasoning)
    outs = [parser.feed(p) for p in pieces] + [parser.finish()]
    return Parsed("".join(o.content for o in outs), "".join(o.reasoning for o in outs))


def full_parse(parsing: OutputParsing, stops: Sequence[str], pieces: Sequence[str],
               starts_in_reasoning: bool = False) -> Parsed:
    """The pipeline's order: reasoning, stop strings on the answer, tool calls."""
    parsers = OutputParsers(parsing, stops, starts_in_reasoning, counter_ids())
    outs, matched = [], None
    for piece in pieces:
        out, matched = parsers.feed(piece)
        outs.append(out)
        if matched is not None:
            outs.append(parsers.finish_after_stop())
            break
    else:
        out, matched = parsers.finish()
        outs.append(out)
    chunks = [TextChunk(o.content, tool_calls=o.tool_calls) for o in outs]
    chunks.append(TextChunk("", void_tool_call=parsers.void_tool_call))
    return Parsed("".join(o.content for o in outs), "".join(o.reasoning for o in outs),
                  tuple(collect_tool_calls(chunks)), parsers.tool_parse_error, matched)


def cuts(text: str) -> list[list[str]]:
    """The text cut once at every position (and not at all)."""
    return [[text]] + [[text[:i], text[i:]] for i in range(1, len(text))]


def cut_at(text: str, positions: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(set(p % (len(text) + 1) for p in positions)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]
