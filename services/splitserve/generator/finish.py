"""Why a sequence stopped on a token: one classifier for every engine."""

from __future__ import annotations

from collections.abc import Collection

from splitserve.link.types import FinishReason, GenerationRequest


def stop_reason(token_id: int | None, request: GenerationRequest, eos_token_ids: Collection[int],
                otherwise: FinishReason) -> tuple[FinishReason, int | None]:
    """The request's own stop tokens first, then the model's EOS ids (unless ignored), else `otherwise`.

    `otherwise` is what the engine knows when neither matched: LENGTH for an engine that reports only
    "finished", STOP_TOKEN for one that reports a stop on `token_id` for its own reasons.
    """
    if token_id is not None and token_id in request.stop_token_ids:
        return FinishReason.STOP_TOKEN, token_id
    if token_id is not None and not request.ignore_eos and token_id in eos_token_ids:
        return FinishReason.EOS_TOKEN, token_id
    return otherwise, token_id if otherwise is FinishReason.STOP_TOKEN else None
