"""Finding a tag in streamed text, holding back only what could still be the start of it."""

from __future__ import annotations


def partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def split_at_tag(buffer: str, tag: str) -> tuple[str, bool, str]:
    """(text before, found, rest): found: rest follows the tag; else rest is held back (a tag's start)."""
    at = buffer.find(tag)
    if at != -1:
        return buffer[:at], True, buffer[at + len(tag):]
    keep = partial_tag_length(buffer, tag)
    return buffer[: len(buffer) - keep], False, buffer[len(buffer) - keep:]
