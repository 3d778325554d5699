"""Tool calls in streamed model text: small state machines fed text deltas.

Two formats, one interface (`ToolCallParser`, made by `make_tool_parser`):

- `hermes` (Hermes, Qwen2.5/Qwen3): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any
  number of them; text around them is content, whitespace after a call is dropped.
- `llama3_json` (Llama 3.1/3.2): the whole answer is `{"name": ..., "parameters": {...}}`, optionally
  after `<|python_tag|>`, several separated by `;`. An answer that does not start with `{` is content.

A call's id and name go out once its name is read, then its arguments as they are written. Only a
possible tag start is held back. When the text breaks the format, parsing stops for the rest of the
answer: the broken call's text, from its start, and all that follows are content, `error` says why,
and `void_call` is the index of a call whose deltas had already gone out (it is not a call).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from splitserve.tokenizer.tag_text import split_at_tag
from splitserve.tokenizer.tool_call_json import CallObjectReader, CallSyntaxError
from splitserve.tokenizer.types import ParsedText, ToolCallDelta

TOOL_CALL_PARSERS = ("hermes", "llama3_json")
PYTHON_TAG = "<|python_tag|>"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser(Protocol):
    """Feeds answer text deltas; returns content and tool-call deltas; `finish` at the end."""

    error: str
    void_call: int | None

    @property
    def num_calls(self) -> int:
        """Complete calls so far."""

    def feed(self, text: str) -> ParsedText: ...

    def finish(self) -> ParsedText: ...


class _Calls:
    """The calls read so far and the deltas of one `feed`."""

    def __init__(self, new_id: Callable[[], str]) -> None:
        self.new_id = new_id
        self.num_calls = 0
        self.reader = CallObjectReader()
        self.raw = ""  # the current call's text, from its start
        self.sent_name = False
        self.sent_arguments = 0
        self.content: list[str] = []
        self.deltas: list[ToolCallDelta] = []

    def start(self, raw: str = "") -> None:
        self.reader, self.raw, self.sent_name, self.sent_arguments = CallObjectReader(), raw, False, 0

    def read(self, text: str) -> int:
        """Feeds the current call; returns the characters used. Raises CallSyntaxError."""
        used = self.reader.feed(text)
        self.raw += text[:used]
        self._send()
        return used

    def complete(self) -> None:
        self.num_calls += 1

    def _send(self) -> None:
        reader = self.reader
        if reader.name is None:
            return
        arguments = reader.arguments[self.sent_arguments:]
        if self.sent_name and not arguments:
            return
        first = not self.sent_name
        self.deltas.append(ToolCallDelta(self.num_calls, self.new_id() if first else "",
                                         reader.name if first else "", arguments))
        self.sent_name, self.sent_arguments = True, len(reader.arguments)

    def take(self) -> ParsedText:
        parsed = ParsedText(content="".join(self.content), tool_calls=tuple(self.deltas))
        self.content, self.deltas = [], []
        return parsed


class _FramedParser:
    """The shared loop: a mode per framing state, each consuming what it can of the buffer."""

    def __init__(self, new_id: Callable[[], str] = new_call_id) -> None:
        self._calls = _Calls(new_id)
        self._buffer = ""
        self._mode = "start"
        self.error = ""
        self.void_call: int | None = None

    @property
    def num_calls(self) -> int:
        return self._calls.num_calls

    def feed(self, text: str) -> ParsedText:
        self._buffer += text
        while self._buffer and self._advance():
            pass
        return self._calls.take()

    def finish(self) -> ParsedText:
        self._end()
        self._buffer = ""
        return self._calls.take()

    def _advance(self) -> bool:
        """Consumes from the buffer; False when it needs more text (what is left is held back)."""
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _plain(self) -> bool:
        self._calls.content.append(self._buffer)
        self._buffer = ""
        return False

    def _read_call(self, next_mode: str) -> bool:
        try:
            used = self._calls.read(self._buffer)
        except CallSyntaxError as error:
            self._fail(str(error))
            return False
        self._buffer = self._buffer[used:]
        if self._calls.reader.done:
            self._mode = next_mode
        return self._calls.reader.done

    def _fail(self, reason: str) -> None:
        """Stops parsing: the broken call's text and the rest of the answer are content."""
        calls = self._calls
        self.error = f"tool call {calls.num_calls}: {reason}"
        if calls.sent_name:
            self.void_call = calls.num_calls
        calls.content.append(calls.raw + self._buffer)
        self._buffer, self._mode = "", "plain"


class HermesToolParser(_FramedParser):
    """`<tool_call>{json}</tool_call>` blocks among content."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def _advance(self) -> bool:
        mode = self._mode
        if mode == "call":
            return self._read_call("close")
        if mode == "close":
            return self._close()
        if mode == "plain":
            return self._plain()
        if mode == "after":  # whitespace after a call is dropped
            self._buffer = self._buffer.lstrip()
            if self._buffer:
                self._mode = "start"
            return bool(self._buffer)
        return self._content()

    def _content(self) -> bool:
        before, found, self._buffer = split_at_tag(self._buffer, self.OPEN)
        if before:
            self._calls.content.append(before)
        if found:
            self._calls.start(self.OPEN)
            self._mode = "call"
        return found

    def _close(self) -> bool:
        text = self._buffer.lstrip()
        if text.startswith(self.CLOSE):
            self._buffer, self._mode = text[len(self.CLOSE):], "after"
            self._calls.complete()
            return True
        if self.CLOSE.startswith(text):
            self._calls.raw += self._buffer[: len(self._buffer) - len(text)]
            self._buffer = text
            return False
        self._fail(f"expected {self.CLOSE} after the call's object")
        return False

    def _end(self) -> None:
        if self._mode == "call":
            self._fail("the answer ended inside the call")
        elif self._mode == "close":  # the object is whole: a missing closing tag is forgiven
            self._calls.complete()
        elif self._mode == "start":
            self._calls.content.append(self._buffer)


class Llama3JsonParser(_FramedParser):
    """An answer of JSON call objects separated by `;`, optionally after `<|python_tag|>`."""

    def __init__(self, new_id: Callable[[], str] = new_call_id) -> None:
        super().__init__(new_id)
        self._prefix = ""  # held text before the first call: content if no call follows

    def _advance(self) -> bool:
        mode = self._mode
        if mode == "call":
            done = self._read_call("between")
            if done:
                self._calls.complete()
            return done
        if mode == "plain":
            return self._plain()
        if mode == "between":
            return self._between()
        return self._start()

    def _start(self) -> bool:
        text = self._buffer.lstrip()
        if not text or (self._mode == "start" and PYTHON_TAG.startswith(text)):
            return False  # a possible tag start
        if self._mode == "start" and text.startswith(PYTHON_TAG):
            self._prefix += self._buffer[: len(self._buffer) - len(text)] + PYTHON_TAG
            self._buffer, self._mode = text[len(PYTHON_TAG):], "tagged"
            return True
        if text.startswith("{"):
            self._buffer, self._prefix, self._mode = text, "", "call"
            self._calls.start()
            return True
        self._buffer = self._prefix + self._buffer
        self._prefix, self._mode = "", "plain"
        return True

    def _between(self) -> bool:
        text = self._buffer.lstrip()
        if not text:
            self._buffer = ""
            return False
        if text.startswith(";"):
            rest = text[1:].lstrip()
            if not rest:
                return False  # holds ";" and the whitespace after it
            if rest.startswith("{"):
                self._buffer, self._mode = rest, "call"
                self._calls.start()
                return True
        self._buffer, self._mode = text, "plain"  # text after whole calls is content
        return True

    def _end(self) -> None:
        if self._mode == "call":
            self._fail("the answer ended inside the call")
        elif self._mode in ("start", "tagged"):
            self._calls.content.append(self._prefix + self._buffer)


def make_tool_parser(name: str, new_id: Callable[[], str] = new_call_id) -> ToolCallParser:
    """The parser called `name` (one of TOOL_CALL_PARSERS)."""
    if name == "hermes":
        return HermesToolParser(new_id)
    if name == "llama3_json":
        return Llama3JsonParser(new_id)
    raise ValueError(f"unknown tool-call parser {name!r}; choose one of {', '.join(TOOL_CALL_PARSERS)}")
