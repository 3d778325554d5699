"""Plain token-level types both tiers use: requests, outputs, the engine's limits and load."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class FinishReason(enum.Enum):
    """Why a token stream ended."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_TOKEN = "stop_token"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingParams:
    """Sampling knobs; None means greedy / no filtering / no penalty."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @property
    def is_greedy(self) -> bool:
        return not self.temperature  # None or 0.0


class ConstraintKind(enum.Enum):
    """What a structured-output constraint's spec is."""

    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    CHOICE = "choice"
    GRAMMAR = "grammar"


@dataclass(frozen=True)
class Constraint:
    """Structured output: the completion must match `spec` (JSON_OBJECT has none; CHOICE uses `choices`)."""

    kind: ConstraintKind
    spec: str = ""
    choices: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Characters in the spec (what the size limit counts)."""
        return len(self.spec) + sum(len(c) for c in self.choices)


@dataclass(frozen=True)
class GenerationRequest:
    """One token-level generation request, as the engine sees it."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int | None = None  # None: the engine's default
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # Hold new tokens up to this long after the last message (0: none), so each message carries more of
    # them; applied once, where the stream leaves the generator tier. Engines ignore it.
    min_message_interval_ms: int = 0
    constraint: Constraint | None = None  # structured output; None: unconstrained


class TokenOutput(NamedTuple):
    """One generated token (a named tuple: one is made per token on the hot path, and tuples are cheap)."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """Tokens produced since the previous chunk; the last chunk of a stream has `finish_reason` set."""

    tokens: list[TokenOutput]
    finish_reason: FinishReason | None = None
    stop_token_id: int | None = None
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    seed: int | None = None
    num_cached_prompt_tokens: int = 0  # of num_prompt_tokens, those served from the engine's prefix cache


@dataclass(frozen=True)
class EngineCapabilities:
    """Optional features an engine honours (requests using others are refused, never ignored)."""

    seed: bool = False
    repetition_penalty: bool = False
    min_new_tokens: bool = False
    logprobs: bool = False
    max_top_logprobs: int = 0
    presence_penalty: bool = False
    frequency_penalty: bool = False
    min_p: bool = False
    constrained_decoding: bool = False


class PoolLimits(NamedTuple):
    """The part of EngineInfo that replicas of one pool must agree on."""

    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_input_tokens: int
    max_total_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int


@dataclass(frozen=True)
class EngineInfo:
    """What the engine serves and the limits every request is checked against."""

    model_name: str
    engine: str
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_input_tokens: int
    max_total_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_batch_size: int
    capabilities: EngineCapabilities
    engine_version: str = ""  # e.g. "TensorRT-LLM 1.2.1": what a capability depends on, named in refusals

    @property
    def pool_limits(self) -> PoolLimits:
        """The limits every replica of a pool must share (the tokenizer tier advertises them)."""
        return PoolLimits(self.vocab_size, self.eos_token_ids, self.max_input_tokens, self.max_total_tokens,
                          self.max_new_tokens, self.default_max_new_tokens)

    @property
    def engine_label(self) -> str:
        """The engine as refusals name it: `'trtllm' (TensorRT-LLM 1.2.1)`."""
        return f"{self.engine!r} ({self.engine_version})" if self.engine_version else repr(self.engine)


@dataclass(frozen=True)
class EngineLoad:
    """A snapshot of the engine's load."""

    queued_requests: int
    running_requests: int
    cache_utilization: float
    max_batch_size: int


@dataclass(frozen=True)
class GeneratorInfo:
    """What a generator replica reports about itself: its engine's info and its tokenizer's fingerprint."""

    engine_info: EngineInfo
    tokenizer_fingerprint: str
