"""The parity check a generator replica must pass before the tokenizer tier routes to it."""

from __future__ import annotations

from splitserve.link.types import GeneratorInfo


class TokenizerMismatch(RuntimeError):
    """The generator's tokenizer differs from ours: token IDs would mean different text."""


def parity_problem(info: GeneratorInfo, fingerprint: str, reference: GeneratorInfo | None) -> str | None:
    """Why this replica must not be used, or None when it matches our tokenizer and the pool's limits."""
    if info.tokenizer_fingerprint != fingerprint:
        return (f"it uses a different tokenizer (fingerprint {info.tokenizer_fingerprint[:12]}…, "
                f"ours {fingerprint[:12]}…); start both tiers with the same model")
    if reference is None:
        return None
    theirs, ours = info.engine_info.pool_limits, reference.engine_info.pool_limits
    for name, their_value, our_value in zip(theirs._fields, theirs, ours, strict=True):
        if their_value != our_value:
            return (f"its {name} is {_shown(their_value)}, the pool's is {_shown(our_value)}; "
                    "start every replica of a pool with the same limits")
    return None


def _shown(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)
