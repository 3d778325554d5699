"""The generator tier: token IDs in, token IDs streamed out, with in-flight batching."""
