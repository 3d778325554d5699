"""Structured output in the native engine: constraints compiled against the model's tokenizer, one matcher per
sequence, and the token bitmask applied to the logits on the device.

The grammar library is llguidance (chosen by measurement, BENCHMARKS.md); it stays behind this module. A
constraint is compiled once per (kind, spec) and kept in a bounded LRU cache as a matcher at its start; each
request gets a copy. Each step the sampler fills the constrained rows' bitmasks on the host (llguidance's
parallel executor, the GIL released), copies them to the device and masks the logits there.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import Constraint, ConstraintKind

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

LIBRARY = f"llguidance {importlib.metadata.version('llguidance')}"
MAX_CACHED_CONSTRAINTS = 128
# JSON is generated compact (no whitespace between tokens): a small model at temperature 1 otherwise wanders
# into runs of spaces and newlines until max_new_tokens.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_ANY_OBJECT = '{"type": "object"}'


class ConstraintMatcher:
    """One sequence's position in its grammar."""

    __slots__ = ("_matcher",)

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advances by one sampled token; False if the grammar refused it (the mask makes that a bug)."""
        return self._matcher.consume_token(token_id)

    @property
    def is_finished(self) -> bool:
        """The grammar is complete and allows nothing more (or EOS was taken)."""
        return self._matcher.is_stopped()

    @property
    def library_matcher(self) -> llguidance.LLMatcher:
        return self._matcher


class ConstraintCompiler:
    """Compiles constraints against one tokenizer; thread-safe (requests compile off the event loop)."""

    def __init__(self, tokenizer_folder: Path | str, vocab_size: int, eos_token_ids: Sequence[int],
                 max_cached: int = MAX_CACHED_CONSTRAINTS) -> None:
        from transformers import AutoTokenizer

        hf_tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_folder))  # a fast one: the folder's JSON
        self._tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                                       eos_token=list(eos_token_ids))
        self._max_cached = max_cached
        self._cache: OrderedDict[Constraint, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, constraint: Constraint) -> ConstraintMatcher:
        """A matcher at the constraint's start; InvalidRequest naming the kind when it does not compile."""
        with self._lock:
            start = self._cache.get(constraint)
            if start is not None:
                self._cache.move_to_end(constraint)
        if start is None:
            start = self._compile(constraint)
            with self._lock:
                self._cache[constraint] = start
                while len(self._cache) > self._max_cached:
                    self._cache.popitem(last=False)
        return ConstraintMatcher(start.deep_copy())

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def _compile(self, constraint: Constraint) -> llguidance.LLMatcher:
        try:
            grammar = grammar_text(constraint)
        except ValueError as error:
            raise _invalid(constraint, str(error)) from None
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise _invalid(constraint, matcher.get_error())
        return matcher


def grammar_text(constraint: Constraint) -> str:
    """The llguidance grammar of a constraint (ValueError for a spec that is not even well-formed)."""
    kind = constraint.kind
    if kind is ConstraintKind.JSON_SCHEMA:
        return llguidance.LLMatcher.grammar_from_json_schema(constraint.spec, defaults=_JSON_OPTIONS)
    if kind is ConstraintKind.JSON_OBJECT:
        return llguidance.LLMatcher.grammar_from_json_schema(_ANY_OBJECT, defaults=_JSON_OPTIONS)
    if kind is ConstraintKind.REGEX:
        return llguidance.LLMatcher.grammar_from_regex(constraint.spec)
    if kind is ConstraintKind.CHOICE:
        return llguidance.grammar_from("choice", json.dumps(list(constraint.choices)))
    return llguidance.grammar_from("grammar", constraint.spec)  # Lark, or GBNF (converted to Lark)


def _invalid(constraint: Constraint, message: str) -> InvalidRequest:
    return InvalidRequest(f"constraint {constraint.kind.value} does not compile ({LIBRARY}): {message.strip()}")


class BitmaskFiller:
    """Fills the token bitmasks of a step's constrained rows on the host and sends them to the device."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self._width = (vocab_size + 31) // 32
        self._device = device
        self._executor: llguidance.LLExecutor | None = None
        self._host = torch.empty(0, self._width, dtype=torch.int32)

    def fill(self, matchers: Sequence[ConstraintMatcher]) -> torch.Tensor:
        """[C, W] int32 on the device: bit t of row r set when row r's grammar allows token t."""
        if self._executor is None:
            self._executor = llguidance.LLExecutor()
        host = self._buffer(len(matchers))
        pairs = [(m.library_matcher, row) for row, m in enumerate(matchers)]
        llguidance.torch.fill_next_token_bitmask_par(self._executor, pairs, host)
        # The buffer is reused: the previous step's copy finished when that step's tokens were waited for.
        return host.to(self._device, non_blocking=True)

    def _buffer(self, rows: int) -> torch.Tensor:
        if self._host.shape[0] < rows:
            self._host = torch.empty(max(rows, 2 * self._host.shape[0]), self._width, dtype=torch.int32,
                                     pin_memory=self._device.type == "cuda")
        return self._host[:rows]


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [C, V] with -inf wherever the bitmask [C, ceil(V/32)] has a 0 bit (a new tensor)."""
    num_rows, vocab = logits.shape
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(num_rows, -1)[:, :vocab]  # [C, V]
    return logits.masked_fill(allowed == 0, float("-inf"))
