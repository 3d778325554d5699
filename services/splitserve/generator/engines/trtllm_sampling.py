"""Maps our sampling parameters onto the three TensorRT-LLM front ends (LLM API, Executor, ModelRunner).

Each front end has its own defaults, so every knob is set explicitly:
- LLM API: greedy when temperature, top_k and top_p are all None.
- Executor: top_k=1 is greedy; for sampling, top_k=0 disables top-k and top_p=1.0 disables top-p.
- Python ModelRunner: SamplingConfig defaults to top_k=1, so temperature alone would still be greedy.
"""

from __future__ import annotations

from typing import Any

from splitserve.generator.engines.trtllm_common import ModelFacts, end_and_stop_ids
from splitserve.link.types import Constraint, ConstraintKind, GenerationRequest, SamplingParams

_REGEX_SPECIALS = frozenset("\\.^$|?*+()[]{}")


def llmapi_kwargs(request: GenerationRequest, facts: ModelFacts) -> dict[str, Any]:
    """Keyword arguments of tensorrt_llm.SamplingParams (LLM API, 1.x)."""
    end_id, stops = end_and_stop_ids(request, facts)
    sampling = request.sampling
    kwargs: dict[str, Any] = {
        "end_id": facts.end_id,  # ignore_eos below, not end_id=-1, is the LLM API's way
        "pad_id": facts.pad_token_id,
        "max_tokens": request.max_new_tokens,
        "detokenize": False,  # the tokenizer tier detokenizes and handles stop strings
        "stop_token_ids": stops or None,
        "include_stop_str_in_output": True,  # keep the stop token, as the torch engine does
        "ignore_eos": end_id == -1,
        "seed": sampling.seed,
        "repetition_penalty": sampling.repetition_penalty,
        "min_tokens": request.min_new_tokens or None,
        "logprobs": 1 if request.logprobs else None,
    }
    if not sampling.is_greedy:
        kwargs |= {"temperature": sampling.temperature, "top_k": sampling.top_k or None,
                   "top_p": sampling.top_p}
    return kwargs


def guided_decoding_kwargs(constraint: Constraint) -> dict[str, Any]:
    """Keyword arguments of tensorrt_llm's GuidedDecodingParams (json, regex, grammar, json_object).

    TensorRT-LLM has no `choice` guide: a choice becomes a regex alternation of the escaped strings. A
    `grammar` goes as it is, in the syntax of the LLM's backend (xgrammar: its EBNF; llguidance: Lark or GBNF).
    """
    kind = constraint.kind
    if kind is ConstraintKind.JSON_SCHEMA:
        return {"json": constraint.spec}
    if kind is ConstraintKind.JSON_OBJECT:
        return {"json_object": True}
    if kind is ConstraintKind.REGEX:
        return {"regex": constraint.spec}
    if kind is ConstraintKind.CHOICE:
        return {"regex": "|".join(f"({_escape(choice)})" for choice in constraint.choices)}
    return {"grammar": constraint.spec}


def _escape(text: str) -> str:
    """A regex matching `text` literally (only the metacharacters escaped: both backends' dialects accept it)."""
    return "".join(f"\\{c}" if c in _REGEX_SPECIALS else c for c in text)


def executor_kwargs(sampling: SamplingParams, min_new_tokens: int) -> dict[str, Any]:
    """Keyword arguments of tensorrt_llm.bindings.executor.SamplingConfig."""
    kwargs: dict[str, Any] = {
        "seed": sampling.seed,
        "repetition_penalty": sampling.repetition_penalty,
        "min_tokens": min_new_tokens or None,
    }
    return kwargs | _knobs(sampling, greedy_top_p=None, greedy_temperature=None)


def runner_kwargs(sampling: SamplingParams, min_new_tokens: int) -> dict[str, Any]:
    """Sampling keyword arguments of the Python ModelRunner.generate (0.x-style names)."""
    # min_length defaults to 1, which bans end_id as the first token; 0 lets a reply be EOS alone
    kwargs: dict[str, Any] = {"min_length": min_new_tokens}
    if sampling.seed is not None:
        kwargs["random_seed"] = sampling.seed
    if sampling.repetition_penalty is not None:
        kwargs["repetition_penalty"] = sampling.repetition_penalty
    return kwargs | _knobs(sampling, greedy_top_p=0.0, greedy_temperature=1.0)


def _knobs(sampling: SamplingParams, greedy_top_p: float | None,
           greedy_temperature: float | None) -> dict[str, Any]:
    if sampling.is_greedy:
        return {"top_k": 1, "top_p": greedy_top_p, "temperature": greedy_temperature}
    return {"top_k": sampling.top_k or 0, "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
            "temperature": sampling.temperature}
