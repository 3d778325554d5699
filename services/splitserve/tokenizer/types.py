"""Plain data types of the tokenizer tier's text API."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from splitserve.link.types import GenerationRequest


class TextFinishReason(enum.Enum):
    """Why a text completion ended."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    STOP_TOKEN = "stop_token"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TextRequest:
    """A text generation request after tokenization: the generator request plus text-level options."""

    generation: GenerationRequest
    stop: tuple[str, ...] = ()
    include_tokens: bool = False
    skip_special_tokens: bool = True


class TextToken(NamedTuple):
    """One generated token with the text it completed (a named tuple, like TokenOutput)."""

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextChunk:
    """A text delta; the last one has `finish_reason` and usage set."""

    text: str
    tokens: list[TextToken] = field(default_factory=list)
    finish_reason: TextFinishReason | None = None
    stop_sequence: str = ""
    stop_token_id: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seed: int | None = None
    cached_prompt_tokens: int = 0
