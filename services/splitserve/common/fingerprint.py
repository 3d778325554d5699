"""A stable fingerprint of a tokenizer, so the two tiers can prove they tokenize alike."""

from __future__ import annotations

import hashlib
from typing import Any


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 over the tokenizer's full definition (vocab, merges, normalizer, special tokens)."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(b"\0" + (tokenizer.chat_template or "").encode())
    return digest.hexdigest()
