"""One request's state inside the native engine: its tokens, how many have KV, its blocks, its knobs.

Plain Python (no torch): the scheduler and block manager read and update it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitserve.generator.engines.native.constraints import ConstraintMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingOptions:
    """Per-sequence sampling, with neutral values for "off" (the sampler builds per-row tensors from these)."""

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # over prompt and output tokens; 1: off
    presence_penalty: float = 0.0  # over output tokens; 0: off
    frequency_penalty: float = 0.0  # over output tokens; 0: off
    seed: int = 0  # the noise of a sampled token depends only on (seed, output position, token id)
    min_new_tokens: int = 0  # until then the sampler masks `eos_token_ids` (EOS and stop ids)
    logprobs: bool = False  # return the chosen token's logprob
    top_logprobs: int = 0  # and this many alternatives

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(eq=False)
class Sequence:
    """A request being generated; `token_ids` is the prompt followed by the output so far."""

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    max_new_tokens: int
    stop_token_ids: frozenset[int] = frozenset()  # EOS (unless ignored) and the request's stop ids
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache (prefix-cache hits included)
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache at the last admission
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0  # leading blocks of block_table already registered in the prefix cache
    num_preemptions: int = 0
    constraint: ConstraintMatcher | None = None  # structured output: advanced with each accepted token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> bool:
        """Adds a sampled token; True when the sequence is now done (a stop id, max_new_tokens, or its grammar done)."""
        self.token_ids.append(token_id)
        if self.constraint is not None and (not self.constraint.accept(token_id) or self.constraint.is_finished):
            return True  # a refused token cannot happen under the mask; ending is all that is left then
        return token_id in self.stop_token_ids or self.num_output_tokens >= self.max_new_tokens

    @property
    def is_constraint_done(self) -> bool:
        """Its grammar is complete (it then ends even when its last token was no stop id)."""
        return self.constraint is not None and self.constraint.is_finished
