"""One request's output text through its parsers: reasoning split off first, then stop strings on the
answer only (the stop matcher never sees reasoning), then tool calls read from what the stops let out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from splitserve.tokenizer.reasoning import ThinkReasoningParser
from splitserve.tokenizer.stop_strings import StopStringMatcher
from splitserve.tokenizer.tool_parsers import ToolCallParser, make_tool_parser, new_call_id
from splitserve.tokenizer.types import OutputParsing, ParsedText, TextChunk, ToolCall


def merge(first: ParsedText, second: ParsedText) -> ParsedText:
    return ParsedText(first.content + second.content, first.reasoning + second.reasoning,
                      first.tool_calls + second.tool_calls)


class OutputParsers:
    """Feeds detokenized text deltas; returns what each part gained and the stop string that matched."""

    def __init__(self, parsing: OutputParsing, stops: Sequence[str], starts_in_reasoning: bool = False,
                 new_id: Callable[[], str] = new_call_id) -> None:
        self._reasoning = (ThinkReasoningParser(starts_in_reasoning) if parsing.reasoning_parser != "none"
                           else None)
        self._stops = StopStringMatcher(stops)
        self._tools: ToolCallParser | None = (make_tool_parser(parsing.tool_call_parser, new_id)
                                              if parsing.tool_call_parser != "none" else None)

    @property
    def num_tool_calls(self) -> int:
        return 0 if self._tools is None else self._tools.num_calls

    @property
    def tool_parse_error(self) -> str:
        return "" if self._tools is None else self._tools.error

    @property
    def void_tool_call(self) -> int | None:
        return None if self._tools is None else self._tools.void_call

    def feed(self, text: str) -> tuple[ParsedText, str | None]:
        """After a match, call `finish_after_stop` and feed no more."""
        reasoning = ""
        if self._reasoning is not None:
            split = self._reasoning.feed(text)
            text, reasoning = split.content, split.reasoning
        answer, matched = self._stops.feed(text)
        if self._tools is None:
            return ParsedText(answer, reasoning), matched
        parsed = self._tools.feed(answer)
        return ParsedText(parsed.content, reasoning, parsed.tool_calls), matched

    def finish(self) -> tuple[ParsedText, str | None]:
        """At the end of generation: releases everything held back (a stop may still match in it)."""
        held = ParsedText()
        if self._reasoning is not None:
            held = self._reasoning.finish()
        answer, matched = self._stops.feed(held.content)
        if matched is None:
            answer += self._stops.flush()
        parsed = ParsedText(answer, held.reasoning)
        if self._tools is not None:
            parsed = merge(ParsedText(reasoning=held.reasoning), merge(self._tools.feed(answer), self._tools.finish()))
        return parsed, matched

    def finish_after_stop(self) -> ParsedText:
        """After a stop string matched: the tool parser's held text (the stop's own is dropped)."""
        return ParsedText() if self._tools is None else self._tools.finish()


def collect_tool_calls(chunks: Sequence[TextChunk]) -> list[ToolCall]:
    """A finished stream's tool-call deltas as whole calls; a call the last chunk names void is left out."""
    calls: dict[int, ToolCall] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls:
            call = calls.get(delta.index)
            calls[delta.index] = (ToolCall(delta.id, delta.name, delta.arguments) if call is None
                                  else replace(call, arguments=call.arguments + delta.arguments))
    void = chunks[-1].void_tool_call if chunks else None
    return [calls[i] for i in sorted(calls) if i != void]
