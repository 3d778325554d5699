"""Reasoning text, `<think>…</think>`, split from the answer in streamed model text.

The rule: reasoning is what the answer opens with between `<think>` and `</think>` (whitespace before
`<think>` and after `</think>` is dropped). When the prompt itself ends with `<think>` (templates of
Qwen3 and DeepSeek-R1 put it there), the output starts inside the reasoning. A `<think>` later in the
answer, or a `</think>` without a reasoning part open, is plain answer text. If the output ends
inside the reasoning, all of it is reasoning and the answer is empty.
"""

from __future__ import annotations

from splitserve.tokenizer.tag_text import split_at_tag
from splitserve.tokenizer.types import ParsedText

REASONING_PARSERS = ("think",)
OPEN, CLOSE = "<think>", "</think>"


def prompt_opens_reasoning(prompt_tail: str) -> bool:
    """True when the rendered prompt ends with `<think>`: the model starts inside its reasoning."""
    return prompt_tail.rstrip().endswith(OPEN)


class ThinkReasoningParser:
    """Feeds text deltas; returns reasoning and answer text, holding back only a possible tag start."""

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._mode = "reasoning" if starts_in_reasoning else "start"
        self._buffer = ""

    def feed(self, text: str) -> ParsedText:
        self._buffer += text
        reasoning: list[str] = []
        answer: list[str] = []
        while self._buffer and self._advance(reasoning, answer):
            pass
        return ParsedText(content="".join(answer), reasoning="".join(reasoning))

    def finish(self) -> ParsedText:
        held, self._buffer = self._buffer, ""
        if self._mode == "reasoning":
            return ParsedText(reasoning=held)
        return ParsedText(content=held if self._mode == "start" else "")

    def _advance(self, reasoning: list[str], answer: list[str]) -> bool:
        """Consumes from the buffer; False when the rest must wait for more text."""
        if self._mode == "start":
            return self._start(answer)
        if self._mode == "reasoning":
            before, found, self._buffer = split_at_tag(self._buffer, CLOSE)
            reasoning.append(before)
            if found:
                self._mode = "after"
            return found
        if self._mode == "after":
            self._buffer = self._buffer.lstrip()
            if self._buffer:
                self._mode = "answer"
            return bool(self._buffer)
        answer.append(self._buffer)
        self._buffer = ""
        return False

    def _start(self, answer: list[str]) -> bool:
        text = self._buffer.lstrip()
        if not text or (OPEN.startswith(text) and text != OPEN):
            return False
        if text.startswith(OPEN):
            self._buffer, self._mode = text[len(OPEN):], "reasoning"
            return True
        self._mode = "answer"  # no reasoning part: the whole output is the answer
        return True
