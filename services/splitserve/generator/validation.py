"""Checks a request against the engine's limits and capabilities before it reaches the engine.

Engines such as transformers' continuous batching fail for everyone on one bad request, so nothing
unchecked is ever submitted.
"""

from __future__ import annotations

import math
from dataclasses import replace

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import Constraint, ConstraintKind, EngineInfo, GenerationRequest, SamplingParams

MAX_STOP_TOKEN_IDS = 256
MAX_CONSTRAINT_CHARS = 65_536  # a schema, regex or grammar (or all choices together): compiled per request
MAX_CHOICES = 1024


def validate_request(request: GenerationRequest, info: EngineInfo) -> GenerationRequest:
    """Returns the request with defaults filled in, or raises InvalidRequest naming the limit."""
    _check_prompt(request.prompt_token_ids, info)
    max_new = _resolve_max_new_tokens(request, info)
    _check_sampling(request.sampling, info)
    _check_stopping(request, info, max_new)
    _check_outputs(request, info)
    if request.constraint is not None:
        _check_constraint(request, request.constraint, info)
    return replace(request, max_new_tokens=max_new)


def _check_prompt(prompt: list[int], info: EngineInfo) -> None:
    if not prompt:
        raise InvalidRequest("prompt is empty: at least one token is required")
    if len(prompt) > info.max_input_tokens:
        raise InvalidRequest(
            f"prompt has {len(prompt)} tokens, over the limit max_input_tokens={info.max_input_tokens}"
        )
    for position, token_id in enumerate(prompt):
        if not 0 <= token_id < info.vocab_size:
            raise InvalidRequest(
                f"token id {token_id} at position {position} is out of vocabulary (vocab_size={info.vocab_size})"
            )


def _resolve_max_new_tokens(request: GenerationRequest, info: EngineInfo) -> int:
    max_new = info.default_max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
    if max_new < 1:
        raise InvalidRequest("max_new_tokens must be at least 1")
    if max_new > info.max_new_tokens:
        raise InvalidRequest(f"max_new_tokens={max_new} is over the limit max_new_tokens={info.max_new_tokens}")
    total = len(request.prompt_token_ids) + max_new
    if total > info.max_total_tokens:
        raise InvalidRequest(
            f"prompt ({len(request.prompt_token_ids)} tokens) + max_new_tokens ({max_new}) = {total} is over "
            f"the limit max_total_tokens={info.max_total_tokens}"
        )
    return max_new


def _check_sampling(sampling: SamplingParams, info: EngineInfo) -> None:
    _check_filters(sampling)
    _check_penalties(sampling)
    _check_sampling_support(sampling, info)


def _check_filters(sampling: SamplingParams) -> None:
    if sampling.temperature is not None and not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        raise InvalidRequest(f"temperature must be a finite number >= 0, got {sampling.temperature}")
    if sampling.top_p is not None and not (math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1):
        raise InvalidRequest(f"top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k is not None and sampling.top_k < 0:
        raise InvalidRequest(f"top_k must be >= 0, got {sampling.top_k}")
    if sampling.min_p is not None and not (math.isfinite(sampling.min_p) and 0 <= sampling.min_p <= 1):
        raise InvalidRequest(f"min_p must be in [0, 1], got {sampling.min_p}")


def _check_penalties(sampling: SamplingParams) -> None:
    penalty = sampling.repetition_penalty
    if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
        raise InvalidRequest(f"repetition_penalty must be a finite number > 0, got {penalty}")
    for name, value in (("presence_penalty", sampling.presence_penalty),
                        ("frequency_penalty", sampling.frequency_penalty)):
        if value is not None and not (math.isfinite(value) and -2 <= value <= 2):
            raise InvalidRequest(f"{name} must be in [-2, 2], got {value}")


def _check_sampling_support(sampling: SamplingParams, info: EngineInfo) -> None:
    """Non-neutral values need the engine's capability: refused, never ignored."""
    caps = info.capabilities
    _require(sampling.repetition_penalty not in (None, 1.0), caps.repetition_penalty, "repetition_penalty", info)
    _require(sampling.presence_penalty not in (None, 0.0), caps.presence_penalty, "presence_penalty", info)
    _require(sampling.frequency_penalty not in (None, 0.0), caps.frequency_penalty, "frequency_penalty", info)
    _require(sampling.min_p not in (None, 0.0), caps.min_p, "min_p", info)
    if sampling.seed is not None and not sampling.is_greedy and not caps.seed:
        raise InvalidRequest(f"engine {info.engine_label} does not support per-request seeds for sampling")


def _require(used: bool, supported: bool, feature: str, info: EngineInfo) -> None:
    if used and not supported:
        raise InvalidRequest(f"engine {info.engine_label} does not support {feature}")


def _check_stopping(request: GenerationRequest, info: EngineInfo, max_new: int) -> None:
    if request.min_new_tokens < 0 or request.min_new_tokens > max_new:
        raise InvalidRequest(f"min_new_tokens={request.min_new_tokens} must be between 0 and max_new_tokens={max_new}")
    if request.min_new_tokens and not info.capabilities.min_new_tokens:
        raise InvalidRequest(f"engine {info.engine_label} does not support min_new_tokens")
    if len(request.stop_token_ids) > MAX_STOP_TOKEN_IDS:  # each one is checked at every decode step
        raise InvalidRequest(f"{len(request.stop_token_ids)} stop token ids, over the limit "
                             f"max_stop_token_ids={MAX_STOP_TOKEN_IDS}")
    for token_id in request.stop_token_ids:
        if not 0 <= token_id < info.vocab_size:
            raise InvalidRequest(f"stop token id {token_id} is out of vocabulary (vocab_size={info.vocab_size})")


def _check_outputs(request: GenerationRequest, info: EngineInfo) -> None:
    caps = info.capabilities
    if request.logprobs and not caps.logprobs:
        raise InvalidRequest(f"engine {info.engine_label} does not return logprobs")
    if request.top_logprobs > caps.max_top_logprobs:
        raise InvalidRequest(
            f"top_logprobs={request.top_logprobs} is over the limit max_top_logprobs={caps.max_top_logprobs} "
            f"of engine {info.engine_label}"
        )


def _check_constraint(request: GenerationRequest, constraint: Constraint, info: EngineInfo) -> None:
    """Capability and size only: whether the spec compiles is the engine's to say, before it admits the request."""
    kind = constraint.kind.value
    if not info.capabilities.constrained_decoding:
        raise InvalidRequest(f"engine {info.engine_label} does not support constrained decoding (constraint {kind})")
    if constraint.size > MAX_CONSTRAINT_CHARS:
        raise InvalidRequest(f"constraint {kind} has {constraint.size} characters, over the limit "
                             f"max_constraint_chars={MAX_CONSTRAINT_CHARS}")
    if constraint.kind is ConstraintKind.CHOICE:
        if not constraint.choices or len(constraint.choices) > MAX_CHOICES:
            raise InvalidRequest(f"constraint choice needs 1..max_choices={MAX_CHOICES} strings, "
                                 f"got {len(constraint.choices)}")
        if any(not c for c in constraint.choices):
            raise InvalidRequest("constraint choice: every choice must be a non-empty string")
    elif constraint.kind is not ConstraintKind.JSON_OBJECT and not constraint.spec.strip():
        raise InvalidRequest(f"constraint {kind} is empty")
    if request.ignore_eos:  # the grammar decides where the completion ends
        raise InvalidRequest(f"ignore_eos cannot be combined with a constraint ({kind})")
    if request.min_new_tokens:  # masking EOS could leave a finished grammar no token at all
        raise InvalidRequest(f"min_new_tokens cannot be combined with a constraint ({kind})")
