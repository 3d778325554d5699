"""The parity check a generator replica must pass before the tokenizer tier routes to it."""

from __future__ import annotations

from splitserve.api.tokens.v1 import tokens_pb2 as pb


class TokenizerMismatch(RuntimeError):
    """The generator's tokenizer differs from ours: token IDs would mean different text."""


# Limits the tokenizer tier advertises in its own GetModelInfo: every replica of a pool must agree on them.
POOL_LIMITS = ("vocab_size", "max_input_tokens", "max_total_tokens", "max_new_tokens", "default_max_new_tokens")


def parity_problem(info: pb.GetModelInfoResponse, fingerprint: str,
                   reference: pb.GetModelInfoResponse | None) -> str | None:
    """Why this replica must not be used, or None when it matches our tokenizer and the pool's limits."""
    if info.tokenizer_fingerprint != fingerprint:
        return (f"it uses a different tokenizer (fingerprint {info.tokenizer_fingerprint[:12]}…, "
                f"ours {fingerprint[:12]}…); start both tiers with the same model")
    if reference is None:
        return None
    for name in POOL_LIMITS:
        theirs, ours = getattr(info, name), getattr(reference, name)
        if theirs != ours:
            return f"its {name} is {theirs}, the pool's is {ours}; start every replica of a pool with the same limits"
    if list(info.eos_token_ids) != list(reference.eos_token_ids):
        return f"its EOS ids {list(info.eos_token_ids)} differ from the pool's {list(reference.eos_token_ids)}"
    return None
