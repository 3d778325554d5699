"""best_of: sample more completions than asked for and return the n with the highest mean token logprob.

The best_of completions run as n > 1 does (samples.py: seed + i, the prompt's blocks shared), with the
generator's logprobs on whether or not the request asked for them. Which ones are best is known only when
all have finished, so the chosen n come at once, best first and numbered 0..n-1 in that order, with the
tokens and logprobs the request asked for (none when it asked for none). Usage counts the returned
completions only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncGenerator

from splitserve.common.errors import InvalidRequest
from splitserve.tokenizer.samples import MAX_N, RunOne, by_completion, generate_samples
from splitserve.tokenizer.types import TextChunk, TextRequest, TextToken


def check_best_of(best_of: int, n: int) -> int:
    """The request's best_of (0 or 1 mean off; equal to n changes nothing), within the limits."""
    if best_of <= 1:
        return 0
    if best_of < n:
        raise InvalidRequest(f"best_of={best_of} must be at least n={n}")
    if best_of > MAX_N:
        raise InvalidRequest(f"best_of={best_of} is over the limit max_n={MAX_N}")
    return best_of if best_of > n else 0


def scoring_request(request: TextRequest) -> TextRequest:
    """The request that samples all best_of completions, with the logprobs that rank them."""
    generation = dataclasses.replace(request.generation, logprobs=True)
    return dataclasses.replace(request, generation=generation, n=request.best_of, best_of=0, include_tokens=True)


def mean_logprob(chunks: list[TextChunk]) -> float:
    """The completion's mean logprob per generated token (-inf for one with no token)."""
    logprobs = [t.logprob for chunk in chunks for t in chunk.tokens if t.logprob is not None]
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf


async def generate_best_of(run: RunOne, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
    """The n best of `request.best_of` completions, each whole, best first; closing this cancels them all."""
    chunks: list[TextChunk] = []
    samples = generate_samples(run, scoring_request(request))
    try:
        async for chunk in samples:
            chunks.append(chunk)
    finally:
        await samples.aclose()
    completions = by_completion(chunks)
    ranked = sorted(completions, key=lambda index: (-mean_logprob(completions[index]), index))
    for rank, index in enumerate(ranked[:request.n]):
        for chunk in completions[index]:
            yield dataclasses.replace(chunk, index=rank, tokens=_as_asked(chunk.tokens, request))


def _as_asked(tokens: list[TextToken], request: TextRequest) -> list[TextToken]:
    if not request.include_tokens:
        return []
    if request.generation.logprobs:
        return tokens
    return [TextToken(t.token_id, t.text) for t in tokens]
