"""Streaming detokenization that is exact: the streamed pieces add up to the full decode.

Built on tokenizers' DecodeStream, which holds back incomplete UTF-8 characters instead of
emitting U+FFFD. A few prompt tokens are passed as context so the first generated token decodes
as it would inside the sequence; `flush()` emits what is still held back at the end.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

CONTEXT_TOKENS = 6  # enough prompt context for leading-space and byte-fallback rules


class IncrementalDetokenizer:
    """Turns generated token ids into text deltas, one id at a time."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._hf = tokenizer
        self._backend = tokenizer.backend_tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(ids=list(prompt_ids[-CONTEXT_TOKENS:]), skip_special_tokens=skip_special_tokens)
        self._generated: list[int] = []
        self._emitted: list[str] = []
        self._fallback = False
        self._held = False  # the last step returned nothing: text may be held back for flush()

    def step(self, token_id: int) -> str:
        """Adds one generated id and returns the text it completes (often one piece, sometimes "")."""
        self._generated.append(token_id)
        if not self._fallback:
            try:
                step = self._stream.step(self._backend, token_id)
                self._held, piece = step is None, step or ""
            except Exception:  # "Invalid prefix": the decoder rewrote earlier text; diff full decodes
                self._fallback = True
                piece = self._diff(hold_incomplete=True)
        else:
            piece = self._diff(hold_incomplete=True)
        if piece:
            self._emitted.append(piece)
        return piece

    def flush(self) -> str:
        """Returns the held-back tail so that the stream equals the full decode."""
        if not self._fallback and not self._held:  # the last step emitted: nothing is held back
            return ""
        tail = self._diff(hold_incomplete=False)
        if tail:
            self._emitted.append(tail)
        return tail

    def _diff(self, hold_incomplete: bool) -> str:
        full = self._hf.decode(self._generated, skip_special_tokens=self._skip)
        emitted = "".join(self._emitted)
        if not full.startswith(emitted) or (hold_incomplete and full.endswith("\ufffd")):
            return ""
        return str(full[len(emitted):])
