"""STAND-IN toy model: the next token is the last one plus one (greedy) or plus 1..3 (sampled).

So a prompt ending in `end_id - 1` ends at once on EOS, and stop tokens are easy to place.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path


def read_vocab_size(folder: str) -> int:
    """vocab_size from a Hugging Face config.json or an engine dir's pretrained_config."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return int(config.get("vocab_size") or config["pretrained_config"]["vocab_size"])


@dataclass
class ToySequence:
    """One request's generation state in the toy model."""

    prompt: list[int]
    vocab_size: int
    end_id: int  # -1: never ends on EOS
    max_new: int
    greedy: bool = True
    seed: int | None = None
    min_tokens: int = 0
    stop_ids: tuple[int, ...] = ()
    generated: list[int] = field(default_factory=list)
    finished: str | None = None  # "end", "stop" or "length"

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed if self.seed is not None else 0)

    def step(self) -> int | None:
        """Generates one token; returns it when it is part of the output (EOS is not)."""
        last = (self.prompt + self.generated)[-1]
        token = (last + (1 if self.greedy else self._rng.randint(2, 4))) % self.vocab_size
        if token == self.end_id and len(self.generated) < self.min_tokens:
            token = (token + 1) % self.vocab_size  # min_tokens suppresses EOS
        if token == self.end_id:
            self.finished = "end"
            return None
        self.generated.append(token)
        if token in self.stop_ids:
            self.finished = "stop"
        elif len(self.generated) >= self.max_new:
            self.finished = "length"
        return token
