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
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True)
class TextRequest:
    """A text generation request after tokenization: the generator request plus text-level options."""

    generation: GenerationRequest
    stop: tuple[str, ...] = ()
    include_tokens: bool = False
    skip_special_tokens: bool = True
    parsing: OutputParsing = field(default_factory=lambda: OutputParsing())
    n: int = 1  # completions to sample (samples.py)
    best_of: int = 0  # > n: sample this many, return the n best (best_of.py); 0: off


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
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    tool_parse_error: str = ""  # set on the last chunk when the output was not the tool-call format
    void_tool_call: int | None = None  # with tool_parse_error: a call whose deltas went out, and is no call
    index: int = 0  # which completion, when the request asked for n > 1


@dataclass(frozen=True)
class FunctionDefinition:
    """A function the model may call: its JSON Schema parameters are kept as a JSON string."""

    name: str
    description: str = ""
    parameters_json: str = ""


@dataclass(frozen=True)
class Tool:
    """A tool offered to the model (only functions exist)."""

    function: FunctionDefinition
    type: str = "function"


class ToolChoiceMode(enum.Enum):
    """How the model may use the tools: `FUNCTION` forces the one named in `ToolChoice.function_name`."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True)
class ToolChoice:
    """The request's tool choice."""

    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    function_name: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A whole tool call: `arguments` is JSON text."""

    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of the tool call at `index`: id and name come on its first delta, then argument fragments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class ParsedText:
    """What the output parsers made of some model text."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class OutputParsing:
    """Which output parsers a request runs ("none": off), chosen from the request and the server flags."""

    tool_call_parser: str = "none"
    reasoning_parser: str = "none"
