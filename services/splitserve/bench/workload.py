"""What the bench sends: prompts of chosen token lengths, output lengths, and arrival times."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitserve.generator.engines.bench_engine import word_token_ids


@dataclass(frozen=True)
class LengthSpec:
    """A length distribution: fixed (low == high) or uniform over [low, high]."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> LengthSpec:
        """'128' is fixed; '64:192' is uniform over that range."""
        low, _, high = text.partition(":")
        spec = cls(int(low), int(high or low))
        if not 1 <= spec.low <= spec.high:
            raise ValueError(f"bad length {text!r}: want N or LOW:HIGH with 1 <= LOW <= HIGH")
        return spec

    def sample(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)


@dataclass(frozen=True)
class WorkItem:
    """One request to send: prompt text, its token ids and the number of tokens to generate."""

    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int


class Workload:
    """Makes work items: synthetic prompts of exact token length, or prompts read from a file."""

    def __init__(self, tokenizer: Any, input_len: LengthSpec, output_len: LengthSpec,
                 prompts_file: Path | None = None, seed: int = 0) -> None:
        self._tokenizer = tokenizer
        self._input_len = input_len
        self._output_len = output_len
        self._rng = random.Random(seed)
        self._words = word_token_ids(tokenizer)
        self._file_prompts = _read_prompts(prompts_file) if prompts_file else []
        self._cache: dict[str, list[int]] = {}

    def next_item(self) -> WorkItem:
        max_new = self._output_len.sample(self._rng)
        if self._file_prompts:
            prompt = self._rng.choice(self._file_prompts)
            ids = self._cache.get(prompt)
            if ids is None:
                ids = self._cache[prompt] = list(self._tokenizer.encode(prompt, add_special_tokens=False))
            return WorkItem(prompt, ids, max_new)
        # Word tokens all start with a space, so the decoded text re-encodes to exactly these ids.
        ids = [self._rng.choice(self._words) for _ in range(self._input_len.sample(self._rng))]
        return WorkItem(str(self._tokenizer.decode(ids)), ids, max_new)


def _read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts
