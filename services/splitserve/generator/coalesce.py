"""Holding a request's tokens for a while, so that each message carries more of them."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator

from splitserve.link.types import GenerationChunk, TokenOutput


async def coalesced(chunks: AsyncGenerator[GenerationChunk, None],
                    interval_s: float) -> AsyncGenerator[GenerationChunk, None]:
    """The first tokens at once, then at most one chunk per `interval_s`, and the last chunk as soon as it comes.

    Tokens are let go with the first chunk that arrives once the interval has passed, so a token waits
    at most the interval plus one engine step. Closing this generator closes `chunks`.
    """
    held: list[TokenOutput] = []
    sent_at: float | None = None
    async with contextlib.aclosing(chunks) as stream:
        async for chunk in stream:
            if chunk.finish_reason is not None:
                yield dataclasses.replace(chunk, tokens=held + chunk.tokens) if held else chunk
                return
            held += chunk.tokens
            now = time.monotonic()
            if held and (sent_at is None or now - sent_at >= interval_s):
                yield GenerationChunk(held)
                held, sent_at = [], now
