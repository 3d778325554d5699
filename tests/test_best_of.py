"""best_of: the n completions with the highest mean token logprob out of best_of, best first, through both APIs."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator

import grpc
import httpx
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.errors import InvalidRequest
from splitserve.link.types import GenerationRequest, SamplingParams
from splitserve.tokenizer.best_of import check_best_of, generate_best_of, mean_logprob, scoring_request
from splitserve.tokenizer.types import TextChunk, TextFinishReason, TextRequest, TextToken
from splitserve_client import AsyncClient, GenerationOptions

from .conftest import Stack

PROMPT = "A short story about a lighthouse keeper and her cat begins:"
# Mean logprobs of the fake completions by index: 2 is best, then 0, then 3, then 1.
MEANS = [-1.0, -3.0, -0.5, -2.0]


def _request(n: int, best_of: int, include_tokens: bool = False, logprobs: bool = False) -> TextRequest:
    generation = GenerationRequest("r", [1, 2, 3], SamplingParams(temperature=1.0, seed=7), logprobs=logprobs)
    return TextRequest(generation, include_tokens=include_tokens, n=n, best_of=best_of)


async def fake_run(request: TextRequest) -> AsyncGenerator[TextChunk, None]:
    """Completion i: two tokens of logprob MEANS[i] +- 0.25 (the mean is MEANS[i]), in two chunks."""
    assert request.generation.logprobs and request.include_tokens  # what best_of ranks by is always asked for
    rid = request.generation.request_id
    index = int(rid.split(".")[1]) if "." in rid else 0
    mean = MEANS[index]
    yield TextChunk(f"c{index}a", [TextToken(10 + index, "a", mean + 0.25, ((5, -9.0),))])
    yield TextChunk(f"c{index}b", [TextToken(20 + index, "b", mean - 0.25)], TextFinishReason.LENGTH,
                    prompt_tokens=3, completion_tokens=2)


async def _collect(request: TextRequest) -> list[TextChunk]:
    return [chunk async for chunk in generate_best_of(fake_run, request)]


def test_best_of_is_checked_against_n_and_the_limit() -> None:
    assert (check_best_of(0, 1), check_best_of(1, 1), check_best_of(3, 3), check_best_of(4, 2)) == (0, 0, 0, 4)
    with pytest.raises(InvalidRequest, match="best_of=2 must be at least n=3"):
        check_best_of(2, 3)
    with pytest.raises(InvalidRequest, match="max_n=16"):
        check_best_of(17, 1)


def test_the_scoring_request_samples_all_of_them_with_logprobs() -> None:
    scoring = scoring_request(_request(2, 4))
    assert (scoring.n, scoring.best_of, scoring.include_tokens, scoring.generation.logprobs) == (4, 0, True, True)


def test_mean_logprob_of_no_token_ranks_last() -> None:
    assert mean_logprob([TextChunk("", [])]) == -math.inf
    assert mean_logprob([TextChunk("x", [TextToken(1, "x", -1.0), TextToken(2, "y", -2.0)])]) == -1.5


async def test_the_best_come_whole_best_first_renumbered_without_unasked_tokens() -> None:
    chunks = await _collect(_request(2, 4))
    assert [(c.index, c.text) for c in chunks] == [(0, "c2a"), (0, "c2b"), (1, "c0a"), (1, "c0b")]
    assert all(c.tokens == [] for c in chunks)  # the request asked for no tokens
    assert [c.finish_reason for c in chunks if c.finish_reason] == [TextFinishReason.LENGTH] * 2


async def test_tokens_come_as_asked_logprobs_only_when_asked() -> None:
    plain = await _collect(_request(1, 3, include_tokens=True))
    assert [t for c in plain for t in c.tokens] == [TextToken(12, "a"), TextToken(22, "b")]
    with_logprobs = await _collect(_request(1, 3, include_tokens=True, logprobs=True))
    assert [t.logprob for c in with_logprobs for t in c.tokens] == [-0.25, -0.75]
    assert with_logprobs[0].tokens[0].top_logprobs == ((5, -9.0),)


def _generate(n: int, best_of: int = 0, logprobs: bool = False) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=PROMPT, n=n, best_of=best_of, sampling=pb.SamplingParams(temperature=1.0, seed=3),
                              stopping=pb.StoppingCriteria(max_new_tokens=12, ignore_eos=True),
                              options=pb.ResponseOptions(logprobs=logprobs))


def _mean(choice: pb.Choice) -> float:
    return sum(t.logprob for t in choice.tokens) / len(choice.tokens)


async def test_grpc_returns_the_best_of_the_same_seeded_samples(stack: Stack) -> None:
    every = await stack.text.Generate(_generate(4, logprobs=True))
    ranked = sorted(every.choices, key=lambda c: -_mean(c))
    best = await stack.text.Generate(_generate(2, best_of=4))
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]  # the same seeds: the same four
    assert [c.index for c in best.choices] == [0, 1] and best.text == ranked[0].text
    assert all(not t.HasField("logprob") for c in best.choices for t in c.tokens)  # not asked for
    assert best.usage.completion_tokens == 24  # the two returned
    async with AsyncClient(stack.public_address) as client:
        completion = await client.generate(PROMPT, GenerationOptions(best_of=4, temperature=1.0, seed=3,
                                                                     max_new_tokens=12, ignore_eos=True))
    assert completion.text == ranked[0].text and len(completion.choices) <= 1


async def test_grpc_refuses_best_of_on_the_stream_and_below_n(stack: Stack) -> None:
    stream = pb.GenerateStreamRequest(prompt=PROMPT, n=1, best_of=3)
    for call in (lambda: anext(aiter(stack.text.GenerateStream(stream))),
                 lambda: stack.text.Generate(_generate(3, best_of=2))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "best_of" in (caught.value.details() or "")


async def test_http_completions_return_the_best_and_refuse_a_streamed_best_of(stack: Stack) -> None:
    every = await stack.text.Generate(_generate(3, logprobs=True))
    best_text = max(every.choices, key=_mean).text
    body = {"model": "SmolLM2-135M-Instruct", "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 3,
            "ignore_eos": True}
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=60) as http:
        answer = await http.post("/completions", json={**body, "best_of": 3})
        streamed = await http.post("/completions", json={**body, "best_of": 3, "stream": True})
        below = await http.post("/completions", json={**body, "best_of": 2, "n": 3})
    assert answer.status_code == 200, answer.text
    [choice] = answer.json()["choices"]
    assert choice["text"] == best_text and choice["index"] == 0
    for refused in (streamed, below):
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "best_of"
