"""The generator's request validation: every limit is refused with a message naming it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from splitserve.common.errors import InvalidRequest
from splitserve.generator.validation import validate_request
from splitserve.link.types import EngineCapabilities, EngineInfo, GenerationRequest, SamplingParams

INFO = EngineInfo("m", "torch", vocab_size=100, eos_token_ids=(2,), max_input_tokens=8, max_total_tokens=12,
                  max_new_tokens=6, default_max_new_tokens=3, max_batch_size=4,
                  capabilities=EngineCapabilities(logprobs=True))


def request(**fields: object) -> GenerationRequest:
    return GenerationRequest(**{"request_id": "r", "prompt_token_ids": [5, 6], **fields})  # type: ignore[arg-type]


def test_defaults_are_filled_in() -> None:
    assert validate_request(request(), INFO).max_new_tokens == 3


@pytest.mark.parametrize(("fields", "needle"), [
    ({"prompt_token_ids": []}, "empty"),
    ({"prompt_token_ids": [1] * 9}, "max_input_tokens=8"),
    ({"prompt_token_ids": [100]}, "vocab_size=100"),
    ({"max_new_tokens": 7}, "max_new_tokens=6"),
    ({"max_new_tokens": 0}, "at least 1"),
    ({"prompt_token_ids": [1] * 8, "max_new_tokens": 5}, "max_total_tokens=12"),
    ({"sampling": SamplingParams(temperature=-0.1)}, "temperature"),
    ({"sampling": SamplingParams(temperature=math.nan)}, "temperature"),
    ({"sampling": SamplingParams(temperature=1.0, top_p=0.0)}, "top_p"),
    ({"sampling": SamplingParams(temperature=1.0, top_k=-1)}, "top_k"),
    ({"sampling": SamplingParams(repetition_penalty=1.2)}, "repetition_penalty"),
    ({"sampling": SamplingParams(temperature=0.7, seed=3)}, "seed"),
    ({"sampling": SamplingParams(presence_penalty=0.5)}, "engine 'torch' does not support presence_penalty"),
    ({"sampling": SamplingParams(frequency_penalty=-0.5)}, "engine 'torch' does not support frequency_penalty"),
    ({"sampling": SamplingParams(min_p=0.1)}, "engine 'torch' does not support min_p"),
    ({"min_new_tokens": 2}, "min_new_tokens"),
    ({"stop_token_ids": (100,)}, "stop token id 100"),
    ({"top_logprobs": 2}, "max_top_logprobs=0"),
])
def test_limits_are_refused_by_name(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        validate_request(request(**fields), INFO)


def test_greedy_requests_may_carry_a_seed() -> None:
    assert validate_request(request(sampling=SamplingParams(temperature=0.0, seed=9)), INFO).sampling.seed == 9


ALL_SAMPLING = replace(INFO, capabilities=EngineCapabilities(presence_penalty=True, frequency_penalty=True, min_p=True))


@pytest.mark.parametrize(("sampling", "needle"), [
    (SamplingParams(presence_penalty=2.01), r"presence_penalty must be in \[-2, 2\]"),
    (SamplingParams(presence_penalty=-2.5), r"presence_penalty must be in \[-2, 2\]"),
    (SamplingParams(frequency_penalty=math.inf), r"frequency_penalty must be in \[-2, 2\]"),
    (SamplingParams(frequency_penalty=math.nan), r"frequency_penalty must be in \[-2, 2\]"),
    (SamplingParams(min_p=-0.1), r"min_p must be in \[0, 1\]"),
    (SamplingParams(min_p=1.5), r"min_p must be in \[0, 1\]"),
    (SamplingParams(min_p=math.nan), r"min_p must be in \[0, 1\]"),
])
@pytest.mark.parametrize("info", [INFO, ALL_SAMPLING], ids=["without", "with"])
def test_out_of_range_penalties_and_min_p_are_refused(sampling: SamplingParams, needle: str,
                                                      info: EngineInfo) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        validate_request(request(sampling=sampling), info)


@pytest.mark.parametrize("sampling", [
    SamplingParams(presence_penalty=0.0, frequency_penalty=0.0, min_p=0.0),
    SamplingParams(presence_penalty=-0.0),
])
def test_neutral_values_pass_an_engine_without_the_capability(sampling: SamplingParams) -> None:
    assert validate_request(request(sampling=sampling), INFO).sampling == sampling


@pytest.mark.parametrize("sampling", [
    SamplingParams(presence_penalty=-2.0, frequency_penalty=2.0, min_p=1.0),
    SamplingParams(temperature=0.8, presence_penalty=0.4, frequency_penalty=0.3, min_p=0.05),
])
def test_an_engine_with_the_capabilities_takes_the_whole_range(sampling: SamplingParams) -> None:
    assert validate_request(request(sampling=sampling), ALL_SAMPLING).sampling == sampling
