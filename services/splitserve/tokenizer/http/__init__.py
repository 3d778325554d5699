"""The OpenAI-compatible HTTP API of the tokenizer tier (OpenAI's JSON types stay inside this package)."""
