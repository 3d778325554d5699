"""One tool call's JSON object, `{"name": ..., "arguments": {...}}`, read a character at a time.

Reading character by character makes the result independent of how the text was cut into deltas.
The arguments object is kept as the model wrote it (JSON text), so it can be streamed as it grows;
its syntax is checked with the json module once it closes. Keys may come in either order;
"parameters" (Llama 3.1) is read as "arguments", and a call without them has "{}".
"""

from __future__ import annotations

import json

ARGUMENT_KEYS = ("arguments", "parameters")
MAX_NAME_CHARS = 256
_WHITESPACE = " \t\n\r"


class CallSyntaxError(ValueError):
    """The text is not a tool call object; the message says why."""


class CallObjectReader:
    """Reads one call object from streamed text; `name` and `arguments` grow as it is read."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.arguments = ""  # raw JSON text of the arguments object read so far
        self.done = False
        self._state = "start"
        self._key = ""
        self._string = ""  # raw characters of the key or name string being read
        self._escape = False
        self._depth = 0
        self._in_string = False  # inside a string of the arguments object
        self._has_arguments = False

    def feed(self, text: str) -> int:
        """Consumes text up to the object's end; returns the characters used. Raises CallSyntaxError."""
        for at, char in enumerate(text):
            self._step(char)
            if self.done:
                return at + 1
        return len(text)

    def _step(self, char: str) -> None:
        state = self._state
        if state == "arguments":
            self._argument_char(char)
        elif state in ("key", "name"):
            if self._string_char(char):
                self._end_string()
        elif char in _WHITESPACE:
            return
        elif state == "value":
            self._start_value(char)
        else:
            self._punctuation(state, char)

    def _punctuation(self, state: str, char: str) -> None:
        expected = {"start": "{", "key_or_end": '"}', "next_key": '"', "colon": ":", "after_value": ",}"}[state]
        if char not in expected:
            raise CallSyntaxError(f"expected one of {expected!r} in the tool call, got {char!r}")
        if char == "{":
            self._state = "key_or_end"
        elif char == '"':
            self._state, self._string = "key", ""
        elif char == ":":
            self._state = "value"
        elif char == ",":
            self._state = "next_key"
        else:
            self._finish()

    def _start_value(self, char: str) -> None:
        if self._key == "name" and char == '"' and self.name is None:
            self._state, self._string = "name", ""
        elif self._key in ARGUMENT_KEYS and char == "{" and not self._has_arguments:
            self._state, self._depth, self._has_arguments = "arguments", 1, True
            self.arguments = "{"
        else:
            raise CallSyntaxError(f"unexpected value for {self._key!r} in the tool call: {char!r}")

    def _string_char(self, char: str) -> bool:
        """Adds a character of a key or name string; True when it closed the string."""
        if char == '"' and not self._escape:
            return True
        self._escape = char == "\\" and not self._escape
        self._string += char
        if len(self._string) > MAX_NAME_CHARS:
            raise CallSyntaxError(f"tool call key or name longer than {MAX_NAME_CHARS} characters")
        return False

    def _end_string(self) -> None:
        try:
            value = json.loads(f'"{self._string}"')
        except json.JSONDecodeError as error:
            raise CallSyntaxError(f"bad string in the tool call: {error}") from error
        if self._state == "name":
            self.name, self._state = value, "after_value"
            return
        if value not in ("name", *ARGUMENT_KEYS):
            raise CallSyntaxError(f"unexpected key {value!r} in the tool call")
        self._key, self._state = value, "colon"

    def _argument_char(self, char: str) -> None:
        self.arguments += char
        if self._in_string:
            if char == '"' and not self._escape:
                self._in_string = False
            self._escape = char == "\\" and not self._escape
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._end_arguments()

    def _end_arguments(self) -> None:
        try:
            json.loads(self.arguments)
        except json.JSONDecodeError as error:
            raise CallSyntaxError(f"the tool call's arguments are not valid JSON: {error}") from error
        self._state = "after_value"

    def _finish(self) -> None:
        if self.name is None:
            raise CallSyntaxError("the tool call has no name")
        if not self._has_arguments:
            self.arguments = "{}"
        self.done = True
