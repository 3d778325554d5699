"""Reasoning split from the answer at every cut, with stop strings and tool calls in the answer only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitserve.tokenizer.reasoning import prompt_opens_reasoning
from splitserve.tokenizer.types import OutputParsing, ToolCall

from .parse_support import Parsed, cut_at, cuts, full_parse, think_parse

THINK_CASES = {
    "reasoning then answer": ("\n<think>\nIt is 2 + 2.\n</think>\n\nFour.", False,
                              Parsed("Four.", "\nIt is 2 + 2.\n")),
    "no reasoning": ("Four, <think>not reasoning</think>", False, Parsed("Four, <think>not reasoning</think>")),
    "opened by the prompt": ("Because.</think>Four.", True, Parsed("Four.", "Because.")),
    "ended inside the reasoning": ("<think>Hmm </thi", False, Parsed("", "Hmm </thi")),
    "a lone closing tag is answer text": ("x</think>y", False, Parsed("x</think>y")),
    "a tag's start only": ("<thi", False, Parsed("<thi")),
}


@pytest.mark.parametrize("text,opened,expected", THINK_CASES.values(), ids=THINK_CASES.keys())
def test_think_parses_the_same_at_every_cut(text: str, opened: bool, expected: Parsed) -> None:
    for pieces in cuts(text):
        assert think_parse(pieces, opened) == expected, pieces


def test_a_prompt_ending_in_think_opens_the_reasoning() -> None:
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")


BOTH = OutputParsing("hermes", "think")


def test_stop_strings_apply_to_the_answer_not_the_reasoning() -> None:
    text = "<think>I will say STOP here.</think>The answer. STOP and more"
    for pieces in cuts(text):
        assert full_parse(OutputParsing("none", "think"), ["STOP"], pieces) == Parsed(
            "The answer. ", "I will say STOP here.", stop="STOP")


def test_without_separate_reasoning_a_stop_in_the_reasoning_ends_it() -> None:
    assert full_parse(OutputParsing(), ["STOP"], ["<think>say STOP</think>x"]) == Parsed("<think>say ", stop="STOP")


CALL_AFTER_REASONING = ('<think>The user wants weather: call it.</think>\n'
                        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')


def test_reasoning_then_a_tool_call_at_every_cut() -> None:
    expected = Parsed("", "The user wants weather: call it.",
                      (ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),))
    for pieces in cuts(CALL_AFTER_REASONING):
        assert full_parse(BOTH, [], pieces) == expected, pieces


@settings(max_examples=200, deadline=None)
@given(text=st.sampled_from([CALL_AFTER_REASONING, *(c[0] for c in THINK_CASES.values()),
                             "<think>a END b</think>c END d"]),
       positions=st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_random_multi_cuts_through_all_parsers_parse_like_the_whole_text(text: str, positions: list[int]) -> None:
    assert full_parse(BOTH, ["END"], cut_at(text, positions)) == full_parse(BOTH, ["END"], [text])
