"""Stop strings over streamed text, found even when split across tokens.

Text that could be the start of a stop string is held back until it either completes the stop
string (generation ends, the stop string is cut) or cannot anymore (it is released).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Feeds text deltas, returns what is safe to emit and the stop string that matched, if any."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text to emit, matched stop string or None). After a match, stop feeding."""
        if not self._stops:
            return text, None
        buffer = self._held + text
        match_at, matched = self._earliest_match(buffer)
        if matched is not None:
            self._held = ""
            return buffer[:match_at], matched
        keep = self._partial_suffix_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """Releases held-back text at the end of generation."""
        held, self._held = self._held, ""
        return held

    def _earliest_match(self, buffer: str) -> tuple[int, str | None]:
        best, matched = len(buffer) + 1, None
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and at < best:
                best, matched = at, stop
        return best, matched

    def _partial_suffix_length(self, buffer: str) -> int:
        """Length of the longest buffer suffix that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest
