"""The tool-call parsers on text cut anywhere: streamed pieces add up to the whole-text parse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitserve.tokenizer.types import ToolCall

from .parse_support import Parsed, cut_at, cuts, tool_parse

WEATHER = '{"city": "Paris \\"centre\\" }", "days": [1, {"x": "]"}], "unit": "°C"}'
HERMES_TWO = (f'Let me check.\n<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>\n'
              '<tool_call>{"arguments": {}, "name": "get_time"}</tool_call>\n')
HERMES_CASES = {
    "two calls after content": (HERMES_TWO, Parsed("Let me check.\n", calls=(
        ToolCall("call_0", "get_weather", WEATHER), ToolCall("call_1", "get_time", "{}")))),
    "no calls, lookalike tags": ("a < b, <tool_cal and </tool_call> are text <", Parsed(
        "a < b, <tool_cal and </tool_call> are text <")),
    "text after a call": ('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n\n  done', Parsed(
        "done", calls=(ToolCall("call_0", "f", '{"a": 1}'),))),
    "closing tag missing at the end": ('<tool_call>{"name": "f", "arguments": {}}', Parsed(
        "", calls=(ToolCall("call_0", "f", "{}"),))),
    "no arguments": ('<tool_call>{"name": "f"}</tool_call>', Parsed("", calls=(ToolCall("call_0", "f", "{}"),))),
}
HERMES_BROKEN = {
    "unquoted keys": '<tool_call>{name: "f"}</tool_call> and more',
    "arguments not JSON": '<tool_call>{"name": "f", "arguments": {"a": 1,}}</tool_call> and more',
    "ended inside the call": '<tool_call>{"name": "f", "arguments": {"a": "unfinished',
    "junk before the closing tag": '<tool_call>{"name": "f", "arguments": {}} oops</tool_call>',
    "unknown key": '<tool_call>{"name": "f", "args": {}}</tool_call>',
}
LLAMA_CASES = {
    "python tag, two calls": ('<|python_tag|>{"name": "f", "parameters": {"q": "a;b"}}; {"name": "g", '
                              '"parameters": {}}', Parsed("", calls=(ToolCall("call_0", "f", '{"q": "a;b"}'),
                                                                     ToolCall("call_1", "g", "{}")))),
    "bare call": ('  {"name": "f", "arguments": {"n": 1}}', Parsed("", calls=(ToolCall("call_0", "f", '{"n": 1}'),))),
    "plain answer": (" The answer is {42}.", Parsed(" The answer is {42}.")),
    "python tag with code": ("<|python_tag|>print(1)", Parsed("<|python_tag|>print(1)")),
}


@pytest.mark.parametrize("text,expected", HERMES_CASES.values(), ids=HERMES_CASES.keys())
def test_hermes_parses_the_same_at_every_cut(text: str, expected: Parsed) -> None:
    for pieces in cuts(text):
        assert tool_parse("hermes", pieces) == expected, pieces


@pytest.mark.parametrize("text", HERMES_BROKEN.values(), ids=HERMES_BROKEN.keys())
def test_broken_hermes_output_is_plain_text_with_the_reason(text: str) -> None:
    for pieces in cuts(text):
        parsed = tool_parse("hermes", pieces)
        assert (parsed.content, parsed.calls) == (text, ()), pieces
        assert parsed.error.startswith("tool call 0: ")


def test_a_broken_second_call_keeps_the_first() -> None:
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "g", "arguments": [}'
    for pieces in cuts(text):
        parsed = tool_parse("hermes", pieces)
        assert parsed.calls == (ToolCall("call_0", "f", "{}"),)
        assert parsed.content == '<tool_call>{"name": "g", "arguments": [}'
        assert parsed.error.startswith("tool call 1: ")


@pytest.mark.parametrize("text,expected", LLAMA_CASES.values(), ids=LLAMA_CASES.keys())
def test_llama3_json_parses_the_same_at_every_cut(text: str, expected: Parsed) -> None:
    for pieces in cuts(text):
        assert tool_parse("llama3_json", pieces) == expected, pieces


def test_llama3_json_answer_that_is_not_a_call_is_text_with_the_reason() -> None:
    text = '{"answer": 42}'
    for pieces in cuts(text):
        parsed = tool_parse("llama3_json", pieces)
        assert (parsed.content, parsed.calls) == (text, ())
        assert "unexpected key 'answer'" in parsed.error


def test_the_name_goes_out_first_then_argument_fragments() -> None:
    from splitserve.tokenizer.tool_parsers import HermesToolParser

    parser = HermesToolParser(lambda: "call_x")
    assert parser.feed('<tool_call>{"name": "get_wea').tool_calls == ()
    first = parser.feed('ther", "arguments": {"ci')
    assert [(d.index, d.id, d.name, d.arguments) for d in first.tool_calls] == [(0, "call_x", "get_weather", '{"ci')]
    second = parser.feed('ty": "Paris"}}</tool_call>')
    assert [(d.id, d.name, d.arguments) for d in second.tool_calls] == [("", "", 'ty": "Paris"}')]


ALL_TEXTS = [(name, text) for name, cases in (("hermes", HERMES_CASES), ("llama3_json", LLAMA_CASES))
             for text, _ in cases.values()] + [("hermes", t) for t in HERMES_BROKEN.values()]


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(ALL_TEXTS), positions=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_random_multi_cuts_parse_like_the_whole_text(case: tuple[str, str], positions: list[int]) -> None:
    name, text = case
    assert tool_parse(name, cut_at(text, positions)) == tool_parse(name, [text])
