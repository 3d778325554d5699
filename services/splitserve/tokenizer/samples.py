"""n > 1: several completions of one prompt, each its own generator request, sharing the prompt's KV blocks.

The first completion runs alone until its first chunk comes back: by then the generator has the
prompt's full blocks in its prefix cache, so the others, started then, reuse them and compute only the
prompt's last partial block. Completion i samples with seed + i when the request has a seed (without
one, each draws its own), and has its own finish reason and usage; chunks are tagged with their index.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Callable

from splitserve.common.errors import InvalidRequest
from splitserve.tokenizer.types import TextChunk, TextRequest

MAX_N = 16
SEED_SPACE = 2**64

RunOne = Callable[[TextRequest], AsyncGenerator[TextChunk, None]]


def by_completion(chunks: list[TextChunk]) -> dict[int, list[TextChunk]]:
    """A finished request's chunks per completion, in index order."""
    out: dict[int, list[TextChunk]] = {}
    for chunk in chunks:
        out.setdefault(chunk.index, []).append(chunk)
    return dict(sorted(out.items()))


def check_n(n: int) -> int:
    """The request's n (0 means 1), within the limit."""
    if n > MAX_N:
        raise InvalidRequest(f"n={n} is over the limit max_n={MAX_N}")
    return max(n, 1)


def sample_request(request: TextRequest, index: int) -> TextRequest:
    """Completion `index` of `request`: its own request id and, with a seed, seed + index."""
    if index == 0:
        return dataclasses.replace(request, n=1)
    generation = request.generation
    seed = generation.sampling.seed
    sampling = (dataclasses.replace(generation.sampling, seed=(seed + index) % SEED_SPACE) if seed is not None
                else generation.sampling)
    return dataclasses.replace(request, n=1, generation=dataclasses.replace(
        generation, request_id=f"{generation.request_id}.{index}", sampling=sampling))


async def generate_samples(run: RunOne, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
    """Streams the chunks of `request.n` completions as they come; closing this cancels every one."""
    queue: asyncio.Queue[tuple[TextChunk | None, BaseException | None]] = asyncio.Queue()
    prompt_cached = asyncio.Event()

    async def pump(index: int) -> None:
        try:
            async with contextlib.aclosing(run(sample_request(request, index))) as chunks:
                async for chunk in chunks:
                    prompt_cached.set()
                    queue.put_nowait((dataclasses.replace(chunk, index=index), None))
            queue.put_nowait((None, None))
        except Exception as error:  # the request fails as a whole with the first error
            queue.put_nowait((None, error))
        finally:
            prompt_cached.set()

    async def start_the_others() -> None:
        await prompt_cached.wait()
        tasks.extend(asyncio.create_task(pump(i)) for i in range(1, request.n))

    tasks = [asyncio.create_task(pump(0)), asyncio.create_task(start_the_others())]
    try:
        for _ in range(request.n):
            while (item := await queue.get())[0] is not None:
                yield item[0]
            if item[1] is not None:
                raise item[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
